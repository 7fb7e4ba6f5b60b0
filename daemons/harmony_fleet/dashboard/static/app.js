// Harmony Fleet dashboard: the only script besides HTMX. The page is served with
// "script-src 'self'": no inline script, no inline handler; everything is wired up here.
(function () {
  "use strict";

  // Live logs: /devices/<id>/logs streams the agent's logs verb as Server-Sent Events.
  // Text is appended as text (never parsed as HTML); the stream is closed on "end" and
  // "failure" so the browser does not reconnect and replay the tail.
  function startLogs(output) {
    var status = document.getElementById("log-status");
    var stop = document.getElementById("log-stop");
    var source = new EventSource(output.getAttribute("data-stream-url"));
    var finished = false;

    function say(text, kind) {
      status.textContent = text;
      status.className = kind || "";
    }
    function finish(text, kind) {
      finished = true;
      source.close();
      stop.disabled = true;
      say(text, kind);
    }
    function append(text) {
      var atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
      output.appendChild(document.createTextNode(text));
      if (atBottom) {
        output.scrollTop = output.scrollHeight;
      }
    }

    source.addEventListener("open", function () {
      stop.disabled = false;
      say("streaming (live)", "ok");
    });
    source.addEventListener("chunk", function (event) {
      append(JSON.parse(event.data).text);
    });
    source.addEventListener("end", function (event) {
      finish(JSON.parse(event.data).message, "note");
    });
    source.addEventListener("failure", function (event) {
      var data = JSON.parse(event.data);
      finish(data.error + ": " + data.message, "bad");
    });
    source.onerror = function () {
      if (!finished) {
        finish("the connection to the dashboard was lost; reload the page to resume", "bad");
      }
    };
    stop.addEventListener("click", function () {
      finish("stopped", "note");
    });
  }

  function init() {
    var output = document.getElementById("log-output");
    if (output && output.hasAttribute("data-stream-url")) {
      startLogs(output);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
