// Reload the status page every few seconds (the script tag's data-period, default 15) while it
// is visible and no form is being used. A static file: the page's Content-Security-Policy allows
// no inline script.
(function () {
  "use strict";
  var script = document.currentScript;
  var seconds = parseInt((script && script.dataset.period) || "15", 10);
  var period = (seconds > 0 ? seconds : 15) * 1000;
  function due() {
    var busy = document.activeElement && document.activeElement.form;
    if (document.visibilityState === "visible" && !busy) {
      window.location.reload();
    } else {
      window.setTimeout(due, period);
    }
  }
  window.setTimeout(due, period);
})();
