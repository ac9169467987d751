// Renders the user's own stream manager from what the server pushes over the
// page's presence socket (presence.js turns each JSON message into a
// `streampai:message` event; dashboard/ws/live.py documents the messages).
(function () {
  "use strict";
  var root = document.getElementById("manager");
  if (!root) { return; }
  var el = {
    state: document.getElementById("manager-state"),
    count: document.getElementById("manager-count"),
    sessions: document.getElementById("manager-sessions"),
    started: document.getElementById("manager-started"),
    components: document.getElementById("manager-components")
  };

  function text(node, value) {
    if (node.textContent !== value) { node.textContent = value; }
  }

  function showManager(message) {
    var state = String(message.state || "unknown");
    root.dataset.state = state;
    text(el.state, state);
    el.state.className = "badge " + state;
    var components = message.components || {};
    var logger = components.ConsoleLogger;
    if (logger && typeof logger.count === "number") {
      text(el.count, "#" + logger.count);
      root.dataset.count = String(logger.count);
    }
    if (typeof message.started_at === "number") {
      text(el.started, new Date(message.started_at * 1000).toLocaleTimeString());
    }
    var items = Object.keys(components).sort().map(function (name) {
      var c = components[name] || {};
      var li = document.createElement("li");
      li.dataset.component = name;
      li.dataset.state = String(c.state);
      li.textContent = name + ": " + c.state + (c.restarts ? " (" + c.restarts + " restarts)" : "");
      return li;
    });
    el.components.replaceChildren.apply(el.components, items);
  }

  function showSessions(message) {
    if (typeof message.sessions !== "number") { return; }
    root.dataset.sessions = String(message.sessions);
    text(el.sessions, String(message.sessions));
  }

  document.addEventListener("streampai:message", function (event) {
    var message = event.detail || {};
    if (String(message.user_id) !== root.dataset.userId) { return; }
    if (message.type === "manager") { showManager(message); }
    if (message.type === "sessions") { showSessions(message); }
  });
  document.addEventListener("streampai:connection", function (event) {
    // While the socket is down what is shown may be stale; say so.
    root.classList.toggle("stale", event.detail.state !== "connected");
  });
})();
