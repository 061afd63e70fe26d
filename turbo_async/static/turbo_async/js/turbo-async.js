/*
 * turbo-async: receive Turbo Stream frames over a Channels WebSocket.
 *
 * Usage (turbo/head.html writes the two scripts; {% turbo_subscribe %} writes the elements and,
 * for pages that forgot head.html, this script again with data-turbo-src):
 *
 *   <script src=".../turbo.es2017-umd.js" defer></script>
 *   <script src=".../turbo-async.js" defer data-ws-path="/ws/"></script>
 *   <turbo-channels-stream-source signed-channel-name="..." data-epoch="..." data-offset="n">
 *   </turbo-channels-stream-source>
 *
 * data-epoch / data-offset (optional): the stream's position when the page was rendered; the first
 * subscribe sends it, so the server replays the frames sent between the render and the subscribe.
 *
 * Wire protocol (JSON text frames, turbo-django's, with additions):
 *   client -> server  {"type": "subscribe",   "signed_channel_name": "...", "ranges": true
 *                      [, "epoch": "...", "offset": n]} (ranges: this client applies messages
 *                     carrying several frames, below)
 *                     {"type": "unsubscribe", "signed_channel_name": "..."}
 *   server -> client  {"signed_channel_name": "...", "data": "<turbo-stream ...>...</turbo-stream>",
 *                      "epoch": "...", "offset": n} (epoch/offset: the publication's position in its
 *                     stream; applied once, in order; a gap refreshes the page)
 *                     the same with "from_offset": m (frames m to n in one message: those that
 *                     queued up for this socket while the server was writing; sent only to a
 *                     client that subscribed with "ranges": true)
 *                     {"type": "reset", "signed_channel_name": "...", "reason": "..."} (what the
 *                     page missed is beyond the history: the client refreshes the page)
 *                     {"type": "subscribed", "signed_channel_name": "..."} (acknowledgement)
 *                     {"type": "ping", "t": <unix time>, "interval": <seconds>} (heartbeat; with
 *                     no message for 2.5 intervals the client drops the socket and reconnects)
 *                     {"type": "error", "error": "...", "signed_channel_name": "...",
 *                      "stream": "chat:RoomStream(1)"} (refusal; the names are absent when the
 *                     error is not about one subscription; "stream" is for people)
 *
 * DOM events (docs/client.rst):
 *   turbo-async:connected     on document, detail {url}
 *   turbo-async:disconnected  on document, detail {code, reason, wasClean}
 *   turbo-async:subscribed    on document, detail: the signed channel name (a string)
 *   turbo-async:refused       on each element of the refused name, bubbling (on document when
 *                             none is left), detail {signedChannelName, stream, reason}
 *   turbo-async:error         on document, detail {signedChannelName (or null), stream, reason}
 *   turbo-async:ping          on document, detail {t, interval} (each server heartbeat)
 *   turbo-async:refresh       on document, detail {reason, signedChannelName}, just before the
 *                             client refreshes the page (reason "signature_expired", "gap")
 * and <html data-turbo-async-connected="true|false">.
 *
 * Plain ES2017, no build step, no dependencies.
 */
(() => {
  "use strict";

  const ELEMENT_NAME = "turbo-channels-stream-source";
  const NAME_ATTRIBUTE = "signed-channel-name";
  // Set by the first copy that runs. The element is only defined once Turbo is there, which may
  // be after a network round trip: a second copy running meanwhile (every {% turbo_subscribe %}
  // writes the script, Turbo Drive re-runs <body> scripts) must still see that one is loading.
  const LOADED = Symbol.for("turbo-async");

  if (!window.customElements || window[LOADED] || window.customElements.get(ELEMENT_NAME)) {
    return;
  }
  window[LOADED] = true;

  // document.currentScript is only set while this script is executing, so it
  // has to be read here, at load, not later from a callback.
  const currentScript = document.currentScript;
  const scriptData = (currentScript && currentScript.dataset) || {};
  const WS_PATH = scriptData.wsPath || "/ws/";
  // Where to load Turbo from when the page did not (turbo/turbo_stream_source.html sets it).
  const TURBO_SRC = scriptData.turboSrc || null;
  const NONCE = (currentScript && currentScript.nonce) || "";
  // "wsgi" when a WSGI server served this page (turbo/head.html says so): it cannot serve WebSockets.
  const SERVED_BY = scriptData.servedBy || "";

  const BACKOFF_INITIAL_MS = 500;
  const BACKOFF_FACTOR = 2;
  const BACKOFF_MAX_MS = 10000;
  // The server pings every `interval` seconds (its HEARTBEAT_INTERVAL, sent in each ping); a
  // socket that brought nothing for this many intervals is taken for dead (half-open TCP, a
  // stalled proxy) and replaced. Armed by the first ping: a server that never pings is trusted.
  const STALE_INTERVALS = 2.5;

  // --- Module-level singleton state (one socket per page) -----------------

  /** @type {Map<string, Set<HTMLElement>>} signed channel name -> elements */
  const registry = new Map();
  /**
   * Names the server has been asked for on the *current* socket and has not
   * refused. Cleared when the socket closes, because a new connection starts
   * with no subscriptions.
   * @type {Set<string>}
   */
  const subscribed = new Set();
  /**
   * The last (epoch, offset) applied per signed channel name: sent with every resubscribe so the
   * server replays what the page missed; frames at or below it are duplicates and dropped.
   * @type {Map<string, {epoch: string, offset: number}>}
   */
  const positions = new Map();
  /** @type {WebSocket|null} */
  let socket = null;
  let reconnectTimer = null;
  let reconnectAttempt = 0;
  let connected = false;
  let lastMessageAt = 0;
  let heartbeatMs = 0; // the server's ping interval, once a ping told it (0: unknown)
  let watchdog = null;
  // A failed handshake is explained once per outage, not at every retry; a socket that brings a
  // message ends the outage.
  let explained = false;

  const emit = (target, type, detail, bubbles = false) => {
    target.dispatchEvent(new CustomEvent(type, { detail, bubbles }));
  };

  const socketUrl = () => {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const path = WS_PATH.charAt(0) === "/" ? WS_PATH : `/${WS_PATH}`;
    return `${scheme}${window.location.host}${path}`;
  };

  const setConnected = (value, detail) => {
    const changed = connected !== value;
    connected = value;
    document.documentElement.dataset.turboAsyncConnected = value ? "true" : "false";
    // Only fire on transitions: failed reconnect attempts never opened, so
    // they should not produce a stream of "disconnected" events.
    if (changed) {
      emit(document, value ? "turbo-async:connected" : "turbo-async:disconnected", detail);
    }
  };

  const send = (message) => {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  };

  const subscribe = (name) => {
    if (subscribed.has(name)) return;
    const position = positions.get(name);
    const message = position
      ? { type: "subscribe", signed_channel_name: name, ranges: true, epoch: position.epoch, offset: position.offset }
      : { type: "subscribe", signed_channel_name: name, ranges: true };
    if (send(message)) {
      subscribed.add(name);
    }
  };

  const unsubscribe = (name) => {
    if (!subscribed.has(name)) return;
    subscribed.delete(name);
    send({ type: "unsubscribe", signed_channel_name: name });
  };

  const scheduleReconnect = () => {
    // Nothing on the page wants updates: stay disconnected until an element
    // connects again (connectedCallback calls ensureSocket()).
    if (registry.size === 0 || reconnectTimer !== null) return;
    const base = BACKOFF_INITIAL_MS * Math.pow(BACKOFF_FACTOR, reconnectAttempt);
    reconnectAttempt += 1;
    // +/-20% jitter spreads out the reconnects of many tabs after a server
    // restart; the cap applies after jitter so it is a hard upper bound.
    const delay = Math.min(BACKOFF_MAX_MS, base * (0.8 + Math.random() * 0.4));
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null;
      if (registry.size > 0) connect();
    }, delay);
  };

  const stopWatchdog = () => {
    if (watchdog !== null) {
      clearInterval(watchdog);
      watchdog = null;
    }
  };

  // Closes a socket that went quiet for longer than STALE_INTERVALS pings. close() on a
  // half-open TCP connection fires "close" only after the browser's own timeout (minutes), so
  // the socket is dropped here at once and a new one opened through the usual backoff.
  const checkAlive = () => {
    if (socket === null || heartbeatMs === 0) return;
    if (Date.now() - lastMessageAt <= heartbeatMs * STALE_INTERVALS) return;
    const ws = socket;
    console.warn(`turbo-async: no message for ${Math.round((Date.now() - lastMessageAt) / 1000)} s; reconnecting`);
    dropSocket(ws, { code: 4000, reason: "heartbeat timeout", wasClean: false });
    try {
      ws.close(4000, "heartbeat timeout");
    } catch (error) {
      // Already closing: nothing to do.
    }
  };

  const dropSocket = (ws, detail) => {
    if (socket !== ws) return;
    socket = null;
    subscribed.clear();
    heartbeatMs = 0;
    stopWatchdog();
    // Frames held back for a missing offset: the resubscription's replay brings them in order.
    ahead.forEach((held) => clearTimeout(held.timer));
    ahead.clear();
    setConnected(false, detail);
    scheduleReconnect();
  };

  const connect = () => {
    if (reconnectTimer !== null) {
      clearTimeout(reconnectTimer);
      reconnectTimer = null;
    }
    if (socket && (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN)) {
      return;
    }

    const url = socketUrl();
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      // Only thrown for a malformed URL, which retrying will not fix.
      console.warn("turbo-async: cannot open WebSocket", url, error);
      return;
    }
    socket = ws;

    let opened = false;
    let heard = false;
    ws.addEventListener("open", () => {
      if (socket !== ws) return;
      opened = true;
      lastMessageAt = Date.now();
      subscribed.clear();
      registry.forEach((elements, name) => subscribe(name));
      setConnected(true, { url });
    });

    ws.addEventListener("message", (event) => {
      if (socket !== ws) return;
      if (!heard) {
        // The backoff starts over only once the server talked: a socket it accepts and closes at
        // once (its channel layer is down) must not reconnect at the first step forever.
        heard = true;
        reconnectAttempt = 0;
        explained = false;
      }
      lastMessageAt = Date.now();
      handleMessage(event.data);
    });

    // "error" is always followed by "close"; all recovery happens there.
    ws.addEventListener("close", (event) => {
      if (socket === ws) explainClose(url, opened, event);
      dropSocket(ws, { code: event.code, reason: event.reason, wasClean: event.wasClean });
    });
  };

  // The browser shows a failed handshake as "Unexpected response code: 404" (or 403) and gives
  // scripts no status at all: say what each one usually means, once per outage.
  const explainClose = (url, opened, event) => {
    if (opened) {
      if (event.reason) console.warn(`turbo-async: the server closed the WebSocket (${event.code}: ${event.reason}); reconnecting`);
      return;
    }
    if (explained) return;
    explained = true;
    if (SERVED_BY === "wsgi") {
      console.warn(
        `turbo-async: the WebSocket ${url} cannot open: this page was served by a WSGI server ` +
          "(Django's runserver without \"daphne\" in INSTALLED_APPS, gunicorn or uWSGI without an " +
          "ASGI worker), which answers WebSocket requests with 404. Put \"daphne\" first in " +
          "INSTALLED_APPS for runserver, or serve the ASGI application (uvicorn proj.asgi:application)."
      );
      return;
    }
    console.warn(
      `turbo-async: the WebSocket handshake with ${url} failed; retrying with backoff. ` +
        "The browser's own message gives the HTTP status. " +
        `404: nothing serves WebSockets at ${WS_PATH}: a WSGI server (runserver without "daphne"), ` +
        'uvicorn without a WebSocket library (pip install "uvicorn[standard]"), or an ASGI ' +
        'application whose "websocket" route lacks turbo_async.routing.websocket_urlpatterns. ' +
        "403: the server refused the handshake; its log says why. Usual causes: the page's origin " +
        "is not allowed (ALLOWED_HOSTS, CSRF_TRUSTED_ORIGINS), or the channel layer (Redis) is down. " +
        "No status: the server is not running or cannot be reached."
    );
  };

  const ensureSocket = () => {
    // A pending reconnect keeps its backoff delay; otherwise connect now.
    if (socket === null && reconnectTimer === null) connect();
  };

  // stream: the server's readable name of the stream ("chat:RoomStream(1)"); the signed name
  // itself is a token that tells a reader nothing.
  const handleError = (reason, name, stream) => {
    if (name !== null && subscribed.has(name)) {
      // The server holds no subscription for this name: forget it, so that no
      // unsubscribe is sent for it and an element connected later asks again.
      subscribed.delete(name);
      console.warn(`turbo-async: the subscription to ${stream || "a stream"} was refused: ${reason}`);
      const elements = registry.get(name);
      if (elements && elements.size > 0) {
        // Copy first: a listener may remove its element (and so unregister it).
        Array.from(elements).forEach((element) => {
          emit(element, "turbo-async:refused", { signedChannelName: name, stream, reason }, true);
        });
      } else {
        emit(document, "turbo-async:refused", { signedChannelName: name, stream, reason });
      }
      return;
    }
    console.warn(`turbo-async: server error: ${reason}${stream ? ` (${stream})` : ""}`);
    emit(document, "turbo-async:error", { signedChannelName: name, stream, reason });
  };

  const handleMessage = (raw) => {
    let message;
    try {
      message = JSON.parse(raw);
    } catch (error) {
      console.warn("turbo-async: ignoring malformed message", raw);
      return;
    }
    if (message === null || typeof message !== "object") {
      console.warn("turbo-async: ignoring message", message);
      return;
    }
    const name = typeof message.signed_channel_name === "string" ? message.signed_channel_name : null;
    if (message.type === "ping") {
      const interval = Number(message.interval);
      if (interval > 0) {
        heartbeatMs = interval * 1000;
        if (watchdog === null) watchdog = setInterval(checkAlive, Math.min(1000, heartbeatMs / 2));
      }
      emit(document, "turbo-async:ping", { t: message.t, interval });
      return;
    }
    if (message.type === "subscribed") {
      // The server's acknowledgement of a subscription; tests and devtools read it.
      emit(document, "turbo-async:subscribed", message.signed_channel_name);
      return;
    }
    if (message.type === "error") {
      if (message.code === "bad_offset" && name !== null && registry.has(name)) {
        // The server does not know our position (never happens with its own offsets): start over.
        positions.delete(name);
        emit(document, "turbo-async:refresh", { reason: "gap", signedChannelName: name });
        refreshPage("gap");
        return;
      }
      if (message.code === "signature_expired" && name !== null && registry.has(name)) {
        // The page was rendered longer ago than SIGNATURE_MAX_AGE: only a new render signs its
        // subscriptions anew, so fetch one rather than stay deaf.
        emit(document, "turbo-async:refresh", { reason: "signature_expired", signedChannelName: name });
        refreshPage("signature_expired");
        return;
      }
      handleError(String(message.error), name, typeof message.stream === "string" ? message.stream : null);
      return;
    }
    if (message.type === "reset") {
      // The frames this page missed are beyond the server's history (trimmed, too old, Redis
      // flushed): only the database can bring the page back.
      if (name !== null && registry.has(name)) {
        positions.delete(name);
        emit(document, "turbo-async:refresh", { reason: "gap", signedChannelName: name });
        refreshPage("gap");
      }
      return;
    }
    if (name === null || typeof message.data !== "string") {
      console.warn("turbo-async: ignoring message", message);
      return;
    }
    const elements = registry.get(name);
    // A frame can still arrive for a name just unsubscribed; drop it quietly.
    if (!elements) return;
    if (typeof message.epoch === "string" && Number.isInteger(message.offset)) {
      receiveNumbered(name, message);
      return;
    }
    render(name, message.data);
  };

  // Frames that came ahead of a missing offset, per name: two workers may number publications 5 and 6
  // and send 6 first, so a jump waits GAP_WAIT_MS for the missing ones before it counts as lost.
  const GAP_WAIT_MS = 2000;
  /** @type {Map<string, {frames: Map<number, {to: number, data: string}>, timer: number}>} */
  const ahead = new Map();

  const gap = (name) => {
    const held = ahead.get(name);
    if (held) clearTimeout(held.timer);
    ahead.delete(name);
    positions.delete(name);
    emit(document, "turbo-async:refresh", { reason: "gap", signedChannelName: name });
    refreshPage("gap");
  };

  const receiveNumbered = (name, message) => {
    const last = positions.get(name);
    if (last && last.epoch !== message.epoch) {
      gap(name); // the stream's offsets were reset (Redis flushed): frames may be lost
      return;
    }
    if (last && message.offset <= last.offset) return; // applied already (a replay, a retry)
    // A message may carry frames from_offset to offset (several that queued up on the server).
    const first = Number.isInteger(message.from_offset) ? message.from_offset : message.offset;
    if (last && first <= last.offset) {
      // Part of it was applied already and it cannot be split (the server never sends this).
      gap(name);
      return;
    }
    if (!last || first === last.offset + 1) {
      positions.set(name, { epoch: message.epoch, offset: message.offset });
      render(name, message.data);
      // Frames held back behind this one can go now, in order.
      const held = ahead.get(name);
      if (held) {
        let next = message.offset + 1;
        while (held.frames.has(next)) {
          const frame = held.frames.get(next);
          held.frames.delete(next);
          positions.set(name, { epoch: message.epoch, offset: frame.to });
          render(name, frame.data);
          next = frame.to + 1;
        }
        if (held.frames.size === 0) {
          clearTimeout(held.timer);
          ahead.delete(name);
        }
      }
      return;
    }
    let held = ahead.get(name);
    if (!held) {
      held = { frames: new Map(), timer: setTimeout(() => gap(name), GAP_WAIT_MS) };
      ahead.set(name, held);
    }
    held.frames.set(first, { to: message.offset, data: message.data });
  };

  const render = (name, data) => {
    const elements = registry.get(name);
    if (!elements) return;
    // Copy first: rendering the stream may remove (and so unregister) an
    // element while we are iterating.
    Array.from(elements).forEach((element) => {
      element.dispatchEvent(new MessageEvent("message", { data }));
    });
  };

  let refreshing = false;
  // Brings the page back to what the server renders now: a Turbo visit replacing this page (a
  // morph refresh when the page asks for one with <meta name="turbo-refresh-method"
  // content="morph">), or a plain reload without Turbo Drive. Once per page load.
  const refreshPage = (reason) => {
    if (refreshing) return;
    refreshing = true;
    console.warn(`turbo-async: refreshing the page (${reason})`);
    const Turbo = window.Turbo;
    if (Turbo && Turbo.session && Turbo.session.drive !== false && typeof Turbo.visit === "function") {
      document.addEventListener("turbo:load", () => { refreshing = false; }, { once: true });
      Turbo.visit(window.location.href, { action: "replace" });
    } else {
      window.location.reload();
    }
  };

  // The stream's position when the server rendered the element ({% turbo_subscribe %} writes
  // data-epoch and data-offset; absent without Redis history). The page shows the database as of
  // that render, so the first subscribe asks for what was sent after it: a save made between the
  // render and the socket's subscribe is replayed instead of lost.
  const renderedPosition = (element) => {
    const epoch = element.getAttribute("data-epoch");
    const offset = Number(element.getAttribute("data-offset"));
    if (!epoch || element.getAttribute("data-offset") === null || !Number.isInteger(offset) || offset < 0) {
      return null;
    }
    return { epoch, offset };
  };

  // Called before the element joins the registry. Only the first element of a name on a page
  // (a page load, or the new <body> of a Turbo Drive visit) sets the position: a second element
  // of the same render keeps the first's, the earlier one, so nothing between them is skipped.
  // A Turbo preview (a cached snapshot) is skipped: its DOM is newer than its attributes, and the
  // real page replaces it.
  const adoptRenderedPosition = (element, name) => {
    const rendered = renderedPosition(element);
    if (rendered === null || document.documentElement.hasAttribute("data-turbo-preview")) return;
    const others = registry.get(name);
    if (others && others.size > 0) return;
    const known = positions.get(name);
    if (known && known.epoch === rendered.epoch && known.offset === rendered.offset) return;
    positions.set(name, rendered);
    // Frames held for a gap belong to the replaced DOM: the (re)subscription's replay brings
    // whatever the new render lacks, in order.
    const held = ahead.get(name);
    if (held) {
      clearTimeout(held.timer);
      ahead.delete(name);
    }
    if (known && subscribed.has(name)) {
      // Still subscribed from the previous page, at another position: the new DOM is as of its
      // render, so ask the server again from there (it replays; duplicates are dropped by offset).
      subscribed.delete(name);
      subscribe(name);
    }
  };

  const register = (element, name) => {
    adoptRenderedPosition(element, name);
    let elements = registry.get(name);
    if (!elements) {
      elements = new Set();
      registry.set(name, elements);
    }
    elements.add(element);
    subscribe(name);
    ensureSocket();
  };

  const unregister = (element, name) => {
    const elements = registry.get(name);
    if (!elements) return;
    elements.delete(element);
    if (elements.size > 0) return;
    registry.delete(name);
    // Defer the unsubscribe by a microtask: when Turbo Drive swaps <body>, the
    // old element is disconnected and its replacement (same name) connected in
    // the same DOM operation, so this avoids an unsubscribe/subscribe round
    // trip and the gap in delivery it would cause.
    Promise.resolve().then(() => {
      if (!registry.has(name)) {
        unsubscribe(name);
        positions.delete(name);
      }
    });
  };

  const turbo = () => {
    if (!window.Turbo) {
      console.error("turbo-async: window.Turbo is not defined; load turbo.es2017-umd.js first");
      return null;
    }
    return window.Turbo;
  };

  class TurboChannelsStreamSource extends HTMLElement {
    static get observedAttributes() {
      return [NAME_ATTRIBUTE];
    }

    constructor() {
      super();
      // The name this element is registered under, or null while detached.
      this._registeredName = null;
    }

    connectedCallback() {
      const Turbo = turbo();
      if (Turbo) Turbo.connectStreamSource(this);
      this._sync();
    }

    disconnectedCallback() {
      const Turbo = turbo();
      if (Turbo) Turbo.disconnectStreamSource(this);
      if (this._registeredName !== null) {
        unregister(this, this._registeredName);
        this._registeredName = null;
      }
    }

    attributeChangedCallback() {
      // Also called for the initial attribute value before connectedCallback;
      // _sync() ignores it until the element is in the document. A microtask later: a morph
      // (Turbo 8 refresh) sets the attributes one by one, and the new name must be registered
      // with the new render's data-epoch/data-offset, not the old page's (which would replay
      // frames the new render already shows).
      Promise.resolve().then(() => this._sync());
    }

    _sync() {
      if (!this.isConnected) return;
      const name = this.getAttribute(NAME_ATTRIBUTE) || null;
      if (name === this._registeredName) return;
      if (this._registeredName !== null) unregister(this, this._registeredName);
      this._registeredName = name;
      if (name !== null) register(this, name);
    }
  }

  // --- Start-up: Turbo first, then the element ----------------------------

  const define = () => {
    if (window.customElements.get(ELEMENT_NAME)) {
      console.warn(`turbo-async: <${ELEMENT_NAME}> is already defined by another script; not defining it`);
      return;
    }
    window.customElements.define(ELEMENT_NAME, TurboChannelsStreamSource);
  };

  // Resolves once every script the page itself loads (deferred and module
  // scripts included) has run, so a page's own Turbo is never loaded twice.
  const whenScriptsRan = () =>
    new Promise((resolve) => {
      if (document.readyState === "complete") {
        resolve();
        return;
      }
      document.addEventListener("DOMContentLoaded", () => resolve(), { once: true });
      window.addEventListener("load", () => resolve(), { once: true });
    });

  const loadTurbo = (src) =>
    new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = src;
      if (NONCE) script.nonce = NONCE;
      script.addEventListener(
        "load",
        () => (window.Turbo ? resolve(window.Turbo) : reject(new Error(`${src} did not define window.Turbo`))),
        { once: true }
      );
      script.addEventListener("error", () => reject(new Error(`could not load Turbo from ${src}`)), {
        once: true,
      });
      // In <head>: Turbo warns when it is loaded from <body>, and keeps head
      // scripts across Turbo Drive visits.
      document.head.appendChild(script);
    });

  // The page asked for streams, not for Turbo Drive: keep its links and forms
  // as they were (full page loads), and prefetch nothing on hover unless a
  // <meta name="turbo-prefetch"> says so (links inside <turbo-frame> would be).
  const streamsOnly = (Turbo) => {
    Turbo.session.drive = false;
    document.addEventListener("turbo:before-prefetch", (event) => {
      if (!document.querySelector('meta[name="turbo-prefetch"]')) event.preventDefault();
    });
  };

  const start = async () => {
    await whenScriptsRan();
    if (!window.Turbo) {
      if (!TURBO_SRC) {
        throw new Error(
          'window.Turbo is not defined: add {% include "turbo/head.html" %} to <head>, ' +
            "or load Turbo's UMD bundle before turbo-async.js"
        );
      }
      console.warn(
        "turbo-async: this page does not load Turbo; loading it for Turbo Streams only (Turbo Drive off). " +
          'Add {% include "turbo/head.html" %} to <head> to load it with Turbo Drive.'
      );
      streamsOnly(await loadTurbo(TURBO_SRC));
    }
    define();
  };

  document.documentElement.dataset.turboAsyncConnected = "false";
  if (window.Turbo) {
    define();
  } else {
    start().catch((error) => {
      // Loud on purpose: without Turbo no stream on this page would ever render.
      console.error(`turbo-async: ${error.message}`);
      emit(document, "turbo-async:error", { signedChannelName: null, reason: error.message });
    });
  }
})();
