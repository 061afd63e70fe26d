/*
 * turbo-async: receive Turbo Stream frames over a Channels WebSocket.
 *
 * Usage (after Turbo's UMD bundle, which defines window.Turbo):
 *
 *   <script src=".../turbo.es2017-umd.js" defer></script>
 *   <script src=".../turbo-async.js" defer data-ws-path="/ws/"></script>
 *   <turbo-channels-stream-source signed-channel-name="..."></turbo-channels-stream-source>
 *
 * Wire protocol (JSON text frames):
 *   client -> server  {"type": "subscribe",   "signed_channel_name": "..."}
 *                     {"type": "unsubscribe", "signed_channel_name": "..."}
 *   server -> client  {"signed_channel_name": "...", "data": "<turbo-stream ...>...</turbo-stream>"}
 *                     {"type": "subscribed", "signed_channel_name": "..."} (acknowledgement)
 *                     anything else (e.g. {"type": "error", "error": "..."}) is logged and ignored.
 *
 * Plain ES2017, no build step, no dependencies.
 */
(function () {
  "use strict";

  var ELEMENT_NAME = "turbo-channels-stream-source";
  var NAME_ATTRIBUTE = "signed-channel-name";

  // Loading the script twice (e.g. once in <head> and again in a body that
  // Turbo Drive merged in) must not open a second socket or throw on define().
  if (!window.customElements || window.customElements.get(ELEMENT_NAME)) {
    return;
  }

  // document.currentScript is only set while this script is executing, so it
  // has to be read here, at load, not later from a callback.
  var currentScript = document.currentScript;
  var WS_PATH =
    (currentScript && currentScript.dataset && currentScript.dataset.wsPath) || "/ws/";

  var BACKOFF_INITIAL_MS = 500;
  var BACKOFF_FACTOR = 2;
  var BACKOFF_MAX_MS = 10000;

  // --- Module-level singleton state (one socket per page) -----------------

  /** @type {Map<string, Set<HTMLElement>>} signed channel name -> elements */
  var registry = new Map();
  /**
   * Names the server has been told about on the *current* socket. Cleared when
   * the socket closes, because a new connection starts with no subscriptions.
   * @type {Set<string>}
   */
  var subscribed = new Set();
  /** @type {WebSocket|null} */
  var socket = null;
  var reconnectTimer = null;
  var reconnectAttempt = 0;
  var connected = false;

  function socketUrl() {
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var path = WS_PATH.charAt(0) === "/" ? WS_PATH : "/" + WS_PATH;
    return scheme + window.location.host + path;
  }

  function setConnected(value, detail) {
    var changed = connected !== value;
    connected = value;
    document.documentElement.dataset.turboAsyncConnected = value ? "true" : "false";
    // Only fire on transitions: failed reconnect attempts never opened, so
    // they should not produce a stream of "disconnected" events.
    if (changed) {
      document.dispatchEvent(
        new CustomEvent(value ? "turbo-async:connected" : "turbo-async:disconnected", {
          detail: detail,
        })
      );
    }
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function subscribe(name) {
    if (subscribed.has(name)) return;
    if (send({ type: "subscribe", signed_channel_name: name })) {
      subscribed.add(name);
    }
  }

  function unsubscribe(name) {
    if (!subscribed.has(name)) return;
    subscribed.delete(name);
    send({ type: "unsubscribe", signed_channel_name: name });
  }

  function connect() {
    if (reconnectTimer !== null) {
      clearTimeout(reconnectTimer);
      reconnectTimer = null;
    }
    if (socket && (socket.readyState === WebSocket.CONNECTING || socket.readyState === WebSocket.OPEN)) {
      return;
    }

    var url = socketUrl();
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (error) {
      // Only thrown for a malformed URL, which retrying will not fix.
      console.warn("turbo-async: cannot open WebSocket", url, error);
      return;
    }
    socket = ws;

    ws.addEventListener("open", function () {
      if (socket !== ws) return;
      reconnectAttempt = 0;
      subscribed.clear();
      registry.forEach(function (elements, name) {
        subscribe(name);
      });
      setConnected(true, { url: url });
    });

    ws.addEventListener("message", function (event) {
      if (socket !== ws) return;
      handleMessage(event.data);
    });

    // "error" is always followed by "close"; all recovery happens there.
    ws.addEventListener("close", function (event) {
      if (socket !== ws) return;
      socket = null;
      subscribed.clear();
      setConnected(false, { code: event.code, reason: event.reason, wasClean: event.wasClean });
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    // Nothing on the page wants updates: stay disconnected until an element
    // connects again (connectedCallback calls ensureSocket()).
    if (registry.size === 0 || reconnectTimer !== null) return;
    var base = BACKOFF_INITIAL_MS * Math.pow(BACKOFF_FACTOR, reconnectAttempt);
    reconnectAttempt += 1;
    // +/-20% jitter spreads out the reconnects of many tabs after a server
    // restart; the cap applies after jitter so it is a hard upper bound.
    var delay = Math.min(BACKOFF_MAX_MS, base * (0.8 + Math.random() * 0.4));
    reconnectTimer = setTimeout(function () {
      reconnectTimer = null;
      if (registry.size > 0) connect();
    }, delay);
  }

  function ensureSocket() {
    // A pending reconnect keeps its backoff delay; otherwise connect now.
    if (socket === null && reconnectTimer === null) connect();
  }

  function handleMessage(raw) {
    var message;
    try {
      message = JSON.parse(raw);
    } catch (error) {
      console.warn("turbo-async: ignoring malformed message", raw);
      return;
    }
    if (message !== null && message.type === "subscribed") {
      // The server's acknowledgement of a subscription; tests and devtools read it.
      document.dispatchEvent(
        new CustomEvent("turbo-async:subscribed", { detail: message.signed_channel_name })
      );
      return;
    }
    if (
      message === null ||
      typeof message !== "object" ||
      typeof message.signed_channel_name !== "string" ||
      typeof message.data !== "string"
    ) {
      console.warn("turbo-async: ignoring message", message);
      return;
    }
    var elements = registry.get(message.signed_channel_name);
    // A frame can still arrive for a name just unsubscribed; drop it quietly.
    if (!elements) return;
    // Copy first: rendering the stream may remove (and so unregister) an
    // element while we are iterating.
    Array.from(elements).forEach(function (element) {
      element.dispatchEvent(new MessageEvent("message", { data: message.data }));
    });
  }

  function register(element, name) {
    var elements = registry.get(name);
    if (!elements) {
      elements = new Set();
      registry.set(name, elements);
    }
    elements.add(element);
    subscribe(name);
    ensureSocket();
  }

  function unregister(element, name) {
    var elements = registry.get(name);
    if (!elements) return;
    elements.delete(element);
    if (elements.size > 0) return;
    registry.delete(name);
    // Defer the unsubscribe by a microtask: when Turbo Drive swaps <body>, the
    // old element is disconnected and its replacement (same name) connected in
    // the same DOM operation, so this avoids an unsubscribe/subscribe round
    // trip and the gap in delivery it would cause.
    Promise.resolve().then(function () {
      if (!registry.has(name)) unsubscribe(name);
    });
  }

  function turbo() {
    if (!window.Turbo) {
      console.warn("turbo-async: window.Turbo is not defined; load turbo.es2017-umd.js first");
      return null;
    }
    return window.Turbo;
  }

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
      var Turbo = turbo();
      if (Turbo) Turbo.connectStreamSource(this);
      this._sync();
    }

    disconnectedCallback() {
      var Turbo = turbo();
      if (Turbo) Turbo.disconnectStreamSource(this);
      if (this._registeredName !== null) {
        unregister(this, this._registeredName);
        this._registeredName = null;
      }
    }

    attributeChangedCallback() {
      // Also called for the initial attribute value before connectedCallback;
      // _sync() ignores it until the element is in the document.
      this._sync();
    }

    _sync() {
      if (!this.isConnected) return;
      var name = this.getAttribute(NAME_ATTRIBUTE) || null;
      if (name === this._registeredName) return;
      if (this._registeredName !== null) unregister(this, this._registeredName);
      this._registeredName = name;
      if (name !== null) register(this, name);
    }
  }

  document.documentElement.dataset.turboAsyncConnected = "false";
  window.customElements.define(ELEMENT_NAME, TurboChannelsStreamSource);
})();
