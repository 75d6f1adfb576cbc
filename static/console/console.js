/* The operator console's behaviour, without any library:
   - the dashboard polls its live fragment and swaps it in (no page reload);
   - "Copy" buttons copy an input's value (e.g. an API key shown once). */
(function () {
  "use strict";

  function poll(box) {
    var url = box.dataset.url;
    var interval = parseInt(box.dataset.interval, 10) || 5000;
    var failures = 0;
    var timer = null;

    function status(text) {
      var el = box.querySelector(".console-refresh-status");
      if (el) { el.textContent = text; }
    }
    function schedule() {
      clearTimeout(timer);
      timer = setTimeout(refresh, Math.min(interval * (1 + failures), 60000));
    }
    function refresh() {
      if (document.hidden) { schedule(); return; }
      fetch(url, { credentials: "same-origin", cache: "no-store",
                   headers: { "X-Requested-With": "XMLHttpRequest" } })
        .then(function (response) {
          if (response.redirected || response.status === 403) {
            status("Signed out: reload the page to sign in again.");
            return null;  // stop polling
          }
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text().then(function (html) {
            box.innerHTML = html;
            box.dataset.refreshed = String(Date.now());
            failures = 0;
            schedule();
          });
        })
        .catch(function (error) {
          failures += 1;
          status("Refresh failed (" + error.message + "); retrying.");
          schedule();
        });
    }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { refresh(); }
    });
    schedule();
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var input = document.getElementById(button.dataset.copy);
        var note = button.parentNode.querySelector(".console-copy-status");
        function done(ok) { if (note) { note.textContent = ok ? "Copied." : "Select it and copy."; } }
        input.focus();
        input.select();
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(input.value).then(function () { done(true); },
                                                          function () { done(false); });
        } else {
          var ok = false;
          try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
          done(ok);
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("console-live");
    if (box) { poll(box); }
    copyButtons();
  });
})();
