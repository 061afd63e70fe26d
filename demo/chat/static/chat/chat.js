/*
 * The demo's little bit of JavaScript (no build step, no CDN).
 *
 * 1. CSRF: forms rendered by a Celery worker (chat/message.html arrives over the WebSocket) cannot
 *    contain a per-user CSRF token, so every non-GET request Turbo makes carries the page's token
 *    (<meta name="csrf-token">) in Django's X-CSRFToken header.
 * 2. Times: a worker renders one message for every reader, in UTC; show them in the reader's zone.
 * 3. Keep the newest message in view when one arrives, unless the reader scrolled up.
 * 4. The edit field fits its text: chat.css does it with field-sizing; elsewhere, grow it here.
 */
(function () {
  "use strict";

  document.addEventListener("turbo:before-fetch-request", function (event) {
    var options = event.detail.fetchOptions;
    if (/^(GET|HEAD)$/i.test(options.method || "GET")) return;
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta && meta.content) options.headers["X-CSRFToken"] = meta.content;
  });

  var timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  var fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

  function localizeTimes(root) {
    if (!root.querySelectorAll) return;
    var times = root.matches && root.matches("time[datetime]") ? [root] : root.querySelectorAll("time[datetime]");
    Array.prototype.forEach.call(times, function (element) {
      var date = new Date(element.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      element.textContent = timeFormat.format(date);
      element.title = fullFormat.format(date);
    });
  }

  var stickToBottom = true;

  function nearBottom(element) {
    return element.scrollHeight - element.scrollTop - element.clientHeight < 80;
  }

  document.addEventListener(
    "scroll",
    function (event) {
      if (event.target && event.target.id === "messages") stickToBottom = nearBottom(event.target);
    },
    true
  );

  document.addEventListener("turbo:load", function () {
    localizeTimes(document);
    var messages = document.getElementById("messages");
    if (messages) messages.scrollTop = messages.scrollHeight;
    stickToBottom = true;
  });

  // Stream actions and frame loads add nodes: localize their times, follow new messages.
  new MutationObserver(function (mutations) {
    mutations.forEach(function (mutation) {
      mutation.addedNodes.forEach(localizeTimes);
      if (mutation.target.id === "messages" && stickToBottom) {
        mutation.target.scrollTop = mutation.target.scrollHeight;
      }
    });
  }).observe(document.documentElement, { childList: true, subtree: true });

  if (!(window.CSS && CSS.supports("field-sizing", "content"))) {
    document.addEventListener("input", function (event) {
      var field = event.target;
      if (!field.matches || !field.matches(".edit-form textarea")) return;
      field.style.height = "auto";
      field.style.height = field.scrollHeight + 2 + "px";
    });
  }
})();
