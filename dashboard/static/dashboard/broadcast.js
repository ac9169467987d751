// The Stream page's ingest and outputs: the CloudflareManager's sticky events ("ingest",
// "input", "outputs"; livestream/components/cloudflare_manager.py) and its commands
// (create_key, show_key, new_key, add_output, set_output, remove_output) through
// window.streampai.command. A user's ingest is made on demand: when the "ingest" event has no
// key yet, this page asks for one (create_key; idempotent, so two tabs asking is harmless).
// The stream key is masked until "Show" (the key comes only in that command's reply, to this
// tab); an output's key is never shown again after it is added.
(function () {
  "use strict";
  var root = document.getElementById("broadcast");
  if (!root) { return; }
  var $ = function (id) { return document.getElementById(id); };
  var el = {
    input: $("stream-input"), unavailable: $("stream-unavailable"), url: $("stream-ingest-url"),
    key: $("stream-key"), show: $("stream-key-show"), renew: $("stream-key-new"), obs: $("stream-obs"),
    outputs: document.querySelector("#stream-outputs tbody"), form: $("output-add"),
    add: $("output-add-button"), error: $("broadcast-error"), ended: $("stream-ended-reason")
  };
  var connected = false;
  var available = false;
  var masked = "–";
  var shown = false;
  var shownKey = "";
  var hasKey = false;
  var creating = false;

  function command(name, args) {
    showError("");
    return window.streampai.command("CloudflareManager", name, args || {})
      .catch(function (error) { showError(error.message); throw error; });
  }

  function showError(message) {
    el.error.textContent = message || "";
    el.error.hidden = !message;
  }

  function render() {
    el.show.disabled = !connected || !available;
    el.renew.disabled = !connected || !available;
    el.add.disabled = !connected;
    if (!shown) { el.key.textContent = masked; }
    el.show.textContent = shown ? "Hide" : "Show";
  }

  function onIngest(data) {
    available = !!data.available;
    el.unavailable.hidden = available;
    el.unavailable.textContent = available ? "" : "Streaming is unavailable: " + (data.reason || "unknown reason");
    el.url.textContent = data.server_url || "–";
    masked = data.key_masked || "–";
    hasKey = !!data.key_masked;
    // Still showing the key this tab asked for (a new key's reply may come before its event)?
    shown = !!shownKey && masked.slice(-4) === shownKey.slice(-4);
    el.obs.textContent = "";
    (data.obs || []).forEach(function (line) {
      var li = document.createElement("li");
      li.textContent = line;
      el.obs.appendChild(li);
    });
    render();
    createKey();
  }

  // No key yet: make one (once at a time; again on the next event or reconnect if it failed).
  function createKey() {
    if (!connected || !available || hasKey || creating) { return; }
    creating = true;
    window.streampai.command("CloudflareManager", "create_key", {}).then(
      function () { creating = false; },
      function () { window.setTimeout(function () { creating = false; createKey(); }, 2000); }
    );
  }

  function onInput(data) {
    var state = data.state === "connected" ? "connected" : "disconnected";
    root.dataset.input = state;
    el.input.textContent = "input " + state;
    el.input.className = "badge input-" + state;
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (text !== undefined) { td.textContent = text; }
    if (className) { td.className = className; }
    row.appendChild(td);
    return td;
  }

  function onOutputs(data) {
    el.outputs.textContent = "";
    (data.outputs || []).forEach(function (output) {
      var row = document.createElement("tr");
      row.dataset.outputId = output.id;
      row.dataset.state = output.state;
      cell(row, output.name);
      cell(row, output.host || "");
      var state = cell(row);
      var badge = document.createElement("span");
      badge.className = "badge output-state output-" + output.state;
      badge.textContent = output.enabled ? output.state : "disabled";
      state.appendChild(badge);
      if (output.error) {
        var why = document.createElement("span");
        why.className = "output-error";
        why.textContent = output.error;
        state.appendChild(why);
      }
      var actions = cell(row);
      var toggle = document.createElement("button");
      toggle.type = "button";
      toggle.className = "output-toggle";
      toggle.textContent = output.enabled ? "Disable" : "Enable";
      toggle.addEventListener("click", function () {
        command("set_output", { id: output.id, enabled: !output.enabled }).catch(function () {});
      });
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "output-remove";
      remove.textContent = "Remove";
      remove.addEventListener("click", function () {
        command("remove_output", { id: output.id }).catch(function () {});
      });
      actions.appendChild(toggle);
      actions.appendChild(remove);
      el.outputs.appendChild(row);
    });
  }

  window.addEventListener("streampai:event", function (event) {
    var frame = event.detail || {};
    if (frame.component === "StreamStateServer" && frame.event === "state") {
      var reason = (frame.data || {}).ended_reason;
      el.ended.hidden = !reason;
      el.ended.textContent = reason ? "The stream ended by itself: " + reason : "";
      return;
    }
    if (frame.component !== "CloudflareManager") { return; }
    if (frame.event === "ingest") { onIngest(frame.data || {}); }
    if (frame.event === "input") { onInput(frame.data || {}); }
    if (frame.event === "outputs") { onOutputs(frame.data || {}); }
  });

  document.addEventListener("streampai:connection", function (event) {
    connected = event.detail.state === "connected";
    render();
    createKey();
  });

  el.show.addEventListener("click", function () {
    if (shown) { shown = false; shownKey = ""; render(); return; }
    command("show_key").then(function (result) {
      shown = true;
      shownKey = result.key;
      el.key.textContent = result.key;
      render();
    }).catch(function () {});
  });

  el.renew.addEventListener("click", function () {
    if (!window.confirm("Make a new stream key? The current one stops working at once.")) { return; }
    command("new_key").then(function (result) {
      shown = true;
      shownKey = result.key;
      el.key.textContent = result.key;
      render();
    }).catch(function () {});
  });

  el.form.addEventListener("submit", function (event) {
    event.preventDefault();
    var args = { name: $("output-name").value, url: $("output-url").value, key: $("output-key").value };
    el.add.disabled = true;
    command("add_output", args).then(function () {
      el.form.reset();
    }).catch(function () {}).then(render);
  });
  render();
})();
