// Tasuki console: the little that needs script. Every page reads fine
// without it; this keeps pages current while sessions run.
(function () {
  "use strict";

  // A part of the page marked `data-refresh` (the sessions table, the
  // robots table): fetch this page again every so often and swap that
  // part, found by its id.
  function refreshPart(el) {
    var every = parseInt(el.getAttribute("data-refresh"), 10) || 5000;
    setTimeout(function () {
      fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.redirected || !r.ok) { throw new Error("status " + r.status); }
          return r.text();
        })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById(el.id);
          var current = document.getElementById(el.id);
          if (fresh && current) {
            current.replaceWith(fresh);
            refreshPart(fresh);
          }
        })
        .catch(function () { setTimeout(function () { refreshPart(el); }, 5000); });
    }, every);
  }

  // A session's log: lines as they arrive, over Server-Sent Events. The
  // browser resumes from the last event id when the connection drops.
  // Lines are added to the page a batch at a time, at most 20 times a
  // second, and only the last `data-keep` stay: a step printing thousands
  // of lines a second must not freeze the page (layout once per batch,
  // not once per line).
  function streamLog(pre) {
    var url = pre.getAttribute("data-stream");
    var shown = pre.getAttribute("data-status");
    var keep = parseInt(pre.getAttribute("data-keep"), 10) || 10000;
    var pending = [];
    var scheduled = false;
    var source = new EventSource(url);

    function lineSpan(l) {
      var span = document.createElement("span");
      span.className = "line level-" + l.level;
      span.setAttribute("data-seq", String(l.seq));
      span.textContent = l.time + " " + l.level + " " + (l.step ? "[" + l.step + "] " : "") + l.message + "\n";
      return span;
    }

    function trimmedBefore(seq) {
      var note = document.getElementById("log-trimmed");
      if (note) {
        note.textContent = "Lines before " + seq + " are not shown here.";
        note.hidden = false;
      }
    }

    function flush() {
      scheduled = false;
      var batch = pending;
      pending = [];
      if (batch.length === 0) { return; }
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var fragment = document.createDocumentFragment();
      for (var i = Math.max(0, batch.length - keep); i < batch.length; i++) {
        fragment.appendChild(lineSpan(batch[i]));
      }
      pre.appendChild(fragment);
      var extra = pre.childElementCount - keep;
      if (extra > 0) {
        var range = document.createRange();
        range.setStartBefore(pre.firstChild);
        range.setEndBefore(pre.children[extra]);
        range.deleteContents();
      }
      if (extra > 0 || batch.length > keep) {
        trimmedBefore(pre.firstElementChild.getAttribute("data-seq"));
      }
      if (atEnd) { pre.scrollTop = pre.scrollHeight; }
    }

    source.addEventListener("line", function (e) {
      var l;
      try { l = JSON.parse(e.data); } catch (err) { return; }
      pending.push(l);
      // A hidden tab runs timers rarely: what it could never show goes.
      if (pending.length > 2 * keep) { pending.splice(0, pending.length - keep); }
      if (!scheduled) { scheduled = true; setTimeout(flush, 50); }
    });
    // A new status: the page shows steps and artifacts as they now
    // stand; it is fetched again (the log resumes where it was).
    source.addEventListener("status", function (e) {
      if (e.data !== shown) { source.close(); setTimeout(function () { location.reload(); }, 300); }
    });
    source.addEventListener("end", function (e) {
      source.close();
      flush();
      var live = document.getElementById("log-live");
      if (live) { live.textContent = "The session has ended (" + e.data + ")."; }
      if (e.data !== shown) { setTimeout(function () { location.reload(); }, 300); }
    });
    source.addEventListener("problem", function (e) {
      source.close();
      var live = document.getElementById("log-live");
      if (live) { live.textContent = "Log stream stopped: " + e.data + "."; }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var parts = document.querySelectorAll("[data-refresh][id]");
    for (var i = 0; i < parts.length; i++) { refreshPart(parts[i]); }
    var log = document.getElementById("log");
    if (log && log.getAttribute("data-stream")) { streamLog(log); }
  });
})();
