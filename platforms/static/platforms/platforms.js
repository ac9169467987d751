// The Stream page's platforms and chat panel (platforms/templates/platforms/_panel.html).
// PlatformSupervisor's "platforms" events (sticky: a tab gets the current list when its
// socket connects) set each connection's state; its "chat" events append a line. Chat is
// only ever inserted with textContent: a message is text, never HTML.
(function () {
  "use strict";
  var list = document.getElementById("chat-lines");
  if (!list) { return; }
  var form = document.getElementById("chat-form");
  var input = document.getElementById("chat-text");
  var error = document.getElementById("chat-error");
  var MAX_LINES = 500;
  var seen = {};

  function showError(message) {
    error.textContent = message || "";
    error.hidden = !message;
  }

  function span(cls, text) {
    var el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  }

  // Lines arrive in order per platform; the recent ones fetched at connect are older than
  // anything received live, so a line goes before the first one with a later time.
  function addLine(data) {
    var id = String(data.id || "");
    if (id && seen[id]) { return; }
    if (id) { seen[id] = true; }
    var li = document.createElement("li");
    li.className = "chat-line";
    li.dataset.platform = String(data.platform || "");
    li.dataset.id = id;
    li.dataset.ts = String(Number(data.ts) || 0);
    li.appendChild(span("chat-platform", String(data.platform || "")));
    (data.badges || []).forEach(function (badge) {
      li.appendChild(span("chat-badge", String(badge).split("/")[0]));
    });
    li.appendChild(span("chat-author", String(data.author || "")));
    li.appendChild(span("chat-text", String(data.text || "")));
    var later = null;
    for (var node = list.lastElementChild; node; node = node.previousElementSibling) {
      if (Number(node.dataset.ts) > Number(li.dataset.ts)) { later = node; } else { break; }
    }
    list.insertBefore(li, later);
    while (list.children.length > MAX_LINES) {
      delete seen[list.firstChild.dataset.id];
      list.removeChild(list.firstChild);
    }
    list.scrollTop = list.scrollHeight;
  }

  function setStates(platforms) {
    (platforms || []).forEach(function (p) {
      var li = document.querySelector('#platform-list li[data-id="' + String(p.id).replace(/"/g, "") + '"]');
      if (!li) { return; }
      var badge = li.querySelector(".platform-state");
      badge.textContent = String(p.state);
      badge.dataset.state = String(p.state);
      li.querySelector(".platform-error").textContent = p.error ? String(p.error) : "";
    });
  }

  window.addEventListener("streampai:event", function (event) {
    var frame = event.detail;
    if (!frame || frame.component !== "PlatformSupervisor") { return; }
    if (frame.event === "chat") { addLine(frame.data || {}); }
    if (frame.event === "platforms") { setStates((frame.data || {}).platforms); }
  });

  // On every (re)connect: the recent lines this tab has not shown (a new tab starts with them).
  document.addEventListener("streampai:connection", function (event) {
    if (event.detail.state !== "connected" || !document.querySelector("#platform-list li[data-id]")) { return; }
    window.streampai.command("PlatformSupervisor", "recent_chat", {})
      .then(function (result) { (result.lines || []).forEach(addLine); })
      .catch(function () { /* no supervisor yet: the live lines still come */ });
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    if (!text.trim()) { return; }
    showError("");
    input.disabled = true;
    window.streampai.command("PlatformSupervisor", "send_chat", { text: text })
      .then(function () { input.value = ""; })
      .catch(function (failure) { showError(failure.message); })
      .then(function () { input.disabled = false; input.focus(); });
  });

  // "Go live" also sends the title and category to the platforms (when one is typed).
  var goLive = document.getElementById("go-live");
  if (goLive) {
    goLive.addEventListener("click", function () {
      var title = document.getElementById("stream-title").value;
      var category = document.getElementById("stream-category").value;
      if (!title.trim() && !category.trim()) { return; }
      window.streampai.command("PlatformSupervisor", "set_stream_info", { title: title, category: category })
        .catch(function (failure) { showError(failure.message); });
    });
  }
})();
