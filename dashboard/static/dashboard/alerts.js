// The alert overlay: shows the AlertManager's alerts one at a time.
//
// presence.js dispatches every event frame from the socket as
//   window "streampai:event", detail = {"type": "event", "component": "AlertManager",
//                                       "event": "alert", "data": {id, kind, from, amount, currency, message}}
// The worker already paces alerts (LIVESTREAM ALERT_DISPLAY_INTERVAL, given here as
// data-display-ms); alerts arriving while one is shown wait here, in order, so a tab
// that was busy never shows two at once. Text only (textContent): alert fields come
// from outside. The element's data-alert-id / data-shown say what was last shown.
(function () {
  "use strict";
  var root = document.getElementById("alert-overlay");
  if (!root) { return; }
  // Hide a moment before the next alert is due, so they do not run into each other.
  var showMs = Math.max(Number(root.dataset.displayMs || 5000) - 250, 1000);
  var waiting = [];
  var seen = {};
  var showing = false;

  function text(id, value) {
    document.getElementById(id).textContent = value || "";
  }

  function amount(data) {
    if (typeof data.amount !== "number") { return ""; }
    if (data.currency) {
      try {
        return new Intl.NumberFormat(undefined, { style: "currency", currency: data.currency }).format(data.amount);
      } catch (e) { /* an unknown code: plain number below */ }
      return data.amount + " " + data.currency;
    }
    return String(data.amount);
  }

  function next() {
    var data = waiting.shift();
    if (!data) {
      showing = false;
      root.hidden = true;
      return;
    }
    showing = true;
    text("alert-kind", data.kind);
    text("alert-from", data.from);
    text("alert-amount", amount(data));
    text("alert-message", data.message);
    root.dataset.alertId = data.id;
    root.dataset.shown = String(Number(root.dataset.shown || 0) + 1);
    root.hidden = false;
    window.setTimeout(next, showMs);
  }

  window.addEventListener("streampai:event", function (event) {
    var frame = event.detail || {};
    if (frame.component !== "AlertManager" || frame.event !== "alert" || !frame.data) { return; }
    // Every tab of the user gets each alert once; guard anyway against showing one twice.
    if (frame.data.id && seen[frame.data.id]) { return; }
    if (frame.data.id) { seen[frame.data.id] = true; }
    waiting.push(frame.data);
    if (!showing) { next(); }
  });
})();
