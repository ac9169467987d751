// Keeps one WebSocket to /ws/presence/ open while the page is.
//
// Reconnect policy (tests/reconnect_policy.py is the same policy, for the tests):
//  - the server restarting (close 1012, or 1001 "going away"; 4012 where 1012 cannot
//    be sent): reconnect after a random 0.1-2 s, or 0.1-s s when the close's reason
//    says "spread=<s>" (a daphne handing off many sockets asks for a longer window),
//    so thousands of tabs handed over by a stopping daphne arrive at a rate the
//    others can take;
//  - anything else unexpected (dropped, refused handshake, 4009): exponential backoff,
//    0.5 s doubling to 15 s, +-25% jitter. Each failed attempt waits longer than the
//    one before (from the last wait, never from scratch), so refused clients never
//    come back faster or as a bigger wave;
//  - 4001 (session ended: logout, impersonation): reload the page;
//  - 4003 (account deactivated): show "signed out", no reconnect;
//  - 4029 (too many open tabs): show it, and retry only after 30-60 s.
//
// Components (issue 11): every {"type": "event"} frame is dispatched as
// window "streampai:event" (detail: the frame); window.streampai.command(component,
// command, args) sends {"type": "command", ..., "id"} and returns a Promise of the
// reply's result (rejected with the reply's error, or when the socket closes first).
(function () {
  "use strict";
  var root = document.getElementById("presence");
  if (!root) { return; }
  var stateEl = document.getElementById("connection-state");
  var dot = document.getElementById("connection-dot");
  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  // data-live: this page renders the pushed manager status (dashboard/ws/live.py).
  var url = scheme + window.location.host + root.dataset.wsPath + (root.dataset.live ? "?live=1" : "");
  var MIN_DELAY = 500;
  var MAX_DELAY = 15000;
  var base = 0; // the last backoff base (ms); 0 once a socket opened
  var socket = null;
  var closedByPage = false;
  var SESSION_ENDED = 4001; // dashboard/ws/live.py
  var DEACTIVATED = 4003; // dashboard/consumers.py
  var TOO_MANY = 4029;
  var RESTART = [1012, 1001, 4012];
  var pending = {}; // command id -> {resolve, reject}
  var nextId = 0;

  // Rejections carry the error message: an Error whose .message and String() are it.
  function failure(message) {
    var error = new Error(message);
    error.toString = function () { return message; };
    return error;
  }

  function settle(message) {
    var waiter = pending[message.id];
    if (!waiter) { return; }
    delete pending[message.id];
    if (message.ok) { waiter.resolve(message.result); } else { waiter.reject(failure(message.error)); }
  }

  function abandon(why) {
    var ids = Object.keys(pending);
    for (var i = 0; i < ids.length; i++) {
      var waiter = pending[ids[i]];
      delete pending[ids[i]];
      waiter.reject(failure(why));
    }
  }

  window.streampai = window.streampai || {};
  window.streampai.command = function (component, command, args) {
    return new Promise(function (resolve, reject) {
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        reject(failure("not connected"));
        return;
      }
      nextId += 1;
      var id = "c" + nextId;
      pending[id] = { resolve: resolve, reject: reject };
      socket.send(JSON.stringify({ type: "command", component: component, command: command, args: args || {}, id: id }));
    });
  };

  function show(state, label) {
    stateEl.textContent = label || state;
    root.dataset.state = state;
    dot.className = "dot " + state;
    document.dispatchEvent(new CustomEvent("streampai:connection", { detail: { state: state } }));
  }

  function backoff() {
    base = Math.min(Math.max(base * 2, MIN_DELAY), MAX_DELAY);
    return base * (0.75 + Math.random() / 2);
  }

  function retry(wait, state, label) {
    root.dataset.retryMs = String(Math.round(wait));
    show(state || "reconnecting", label);
    window.setTimeout(connect, wait);
  }

  function connect() {
    show("connecting");
    socket = new WebSocket(url);
    socket.onopen = function () {
      base = 0;
      show("connected");
    };
    socket.onmessage = function (event) {
      var message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if (message && message.type === "event") {
        window.dispatchEvent(new CustomEvent("streampai:event", { detail: message }));
        return;
      }
      if (message && message.type === "reply") {
        settle(message);
        return;
      }
      document.dispatchEvent(new CustomEvent("streampai:message", { detail: message }));
    };
    socket.onclose = function (event) {
      abandon("connection lost before the reply");
      if (closedByPage) { return; }
      if (event.code === SESSION_ENDED) {
        // Logged out or switched user (impersonation) in this session: the
        // page belongs to the old user, so load it again instead of reconnecting
        // (a moment later, so the tab that did it has stored its new cookie).
        show("ended");
        window.setTimeout(function () { window.location.reload(); }, 750);
        return;
      }
      if (event.code === DEACTIVATED) {
        show("signed-out", "signed out");
        return;
      }
      if (event.code === TOO_MANY) {
        base = MAX_DELAY;
        retry(30000 + Math.random() * 30000, "too-many", "too many open tabs");
        return;
      }
      if (RESTART.indexOf(event.code) >= 0 && base === 0) {
        // The server is being restarted (a deploy): come back soon, spread out
        // over the window it asked for (dashboard/daphne/shutdown.py), 2 s by default.
        var asked = /spread=([0-9.]+)/.exec(event.reason || "");
        var spread = asked ? Math.min(Math.max(parseFloat(asked[1]) * 1000, 2000), 30000) : 2000;
        base = 100 + Math.random() * (spread - 100);
        retry(base);
        return;
      }
      retry(backoff());
    };
  }

  window.addEventListener("pagehide", function () {
    closedByPage = true;
    if (socket) { socket.close(); }
  });
  window.streampaiSocket = function () { return socket; };
  connect();
})();
