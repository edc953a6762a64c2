// The web console's one script. Every page works without it; it adds:
// - live updates: a page whose <body> names an event source (data-live)
//   reloads when the followed record changes (server-sent events);
// - confirmations: a form with data-confirm asks before it is sent.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var live = document.body.getAttribute("data-live");
  var holder = document.querySelector("[data-state]");
  if (live && holder && window.EventSource) {
    var state = holder.getAttribute("data-state");
    var source = new EventSource(live);
    source.addEventListener("job", function (event) {
      if (event.data !== state) {
        source.close();
        window.location.reload();
      }
    });
    // The stream ends when the job is settled; the server closes it.
    source.onerror = function () { source.close(); };
  }
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
  });
});
