/* The operator console's behaviour, without any library:
   - the dashboard polls its live fragment and swaps it in (no page reload);
   - "Copy" buttons copy an input's value (e.g. an API key shown once);
   - id copy buttons (data-copy-text, also in polled fragments) copy the whole id. */
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

  function copyText(text, done) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); },
                                               function () { done(false); });
      return;
    }
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    done(ok);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy-text]") : null;
    if (!button) { return; }
    event.preventDefault();
    copyText(button.dataset.copyText, function (ok) {
      button.textContent = ok ? "copied" : "select it";
      button.classList.toggle("console-copied", ok);
      setTimeout(function () { button.textContent = "copy"; button.classList.remove("console-copied"); }, 1500);
    });
  });

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("console-live");
    if (box) { poll(box); }
    copyButtons();
  });
})();
