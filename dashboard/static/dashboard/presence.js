// Keeps one WebSocket to /ws/presence/ open while the page is, reconnecting
// with exponential backoff (0.5 s doubling to 15 s, with jitter) if it drops.
(function () {
  "use strict";
  var root = document.getElementById("presence");
  if (!root) { return; }
  var stateEl = document.getElementById("connection-state");
  var dot = document.getElementById("connection-dot");
  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  // data-live: this page renders the pushed manager status (dashboard/live.py).
  var url = scheme + window.location.host + root.dataset.wsPath + (root.dataset.live ? "?live=1" : "");
  var delay = 500;
  var maxDelay = 15000;
  var socket = null;
  var closedByPage = false;
  var SESSION_ENDED = 4001; // dashboard/live.py

  function show(state) {
    stateEl.textContent = state;
    root.dataset.state = state;
    dot.className = "dot " + state;
    document.dispatchEvent(new CustomEvent("streampai:connection", { detail: { state: state } }));
  }

  function connect() {
    show("connecting");
    socket = new WebSocket(url);
    socket.onopen = function () {
      delay = 500;
      show("connected");
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      document.dispatchEvent(new CustomEvent("streampai:message", { detail: message }));
    };
    socket.onclose = function (event) {
      if (closedByPage) { return; }
      if (event.code === SESSION_ENDED) {
        // Logged out or switched user (impersonation) in this session: the
        // page belongs to the old user, so load it again instead of reconnecting
        // (a moment later, so the tab that did it has stored its new cookie).
        show("ended");
        window.setTimeout(function () { window.location.reload(); }, 750);
        return;
      }
      var wait = Math.min(delay, maxDelay) * (0.75 + Math.random() / 2);
      show("reconnecting");
      window.setTimeout(connect, wait);
      delay = Math.min(delay * 2, maxDelay);
    };
  }

  window.addEventListener("pagehide", function () {
    closedByPage = true;
    if (socket) { socket.close(); }
  });
  window.streampaiSocket = function () { return socket; };
  connect();
})();
