// The Stream page: shows StreamStateServer's state (its "state" events, sticky: a
// tab gets the current one right after its socket connects) and sends go_live /
// end_stream through window.streampai.command (presence.js). Both buttons stay
// disabled while a command is in flight, and whichever does not apply to the
// current state stays disabled too.
(function () {
  "use strict";
  var root = document.getElementById("stream");
  if (!root) { return; }
  var el = {
    state: document.getElementById("stream-state"),
    since: document.getElementById("stream-since"),
    liveAt: document.getElementById("stream-live-at"),
    goLive: document.getElementById("go-live"),
    end: document.getElementById("end-stream"),
    error: document.getElementById("stream-error")
  };
  var state = "offline";
  var busy = false;
  var connected = false;

  function time(seconds) {
    return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "–";
  }

  function render() {
    root.dataset.state = state;
    root.dataset.busy = busy ? "1" : "";
    el.state.textContent = state;
    el.state.className = "badge stream-" + state;
    el.goLive.disabled = busy || !connected || state !== "offline";
    el.end.disabled = busy || !connected || (state !== "live" && state !== "starting");
  }

  function showError(message) {
    el.error.textContent = message || "";
    el.error.hidden = !message;
  }

  window.addEventListener("streampai:event", function (event) {
    var frame = event.detail;
    if (!frame || frame.component !== "StreamStateServer" || frame.event !== "state") { return; }
    var data = frame.data || {};
    state = String(data.state || "offline");
    el.since.textContent = time(data.since);
    el.liveAt.textContent = time(data.live_at);
    render();
  });

  document.addEventListener("streampai:connection", function (event) {
    connected = event.detail.state === "connected";
    render();
  });

  function send(button) {
    busy = true;
    showError("");
    render();
    window.streampai.command("StreamStateServer", button.dataset.command, {})
      .catch(function (error) { showError(error.message); })
      .then(function () { busy = false; render(); });
  }

  el.goLive.addEventListener("click", function () { send(el.goLive); });
  el.end.addEventListener("click", function () { send(el.end); });
  render();
})();
