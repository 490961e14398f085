// Reload the status page every 15 s while it is visible and no form is being used.
// (Static file: the page's Content-Security-Policy allows no inline script.)
(function () {
  "use strict";
  var PERIOD = 15000;
  function due() {
    var busy = document.activeElement && document.activeElement.form;
    if (document.visibilityState === "visible" && !busy) {
      window.location.reload();
    } else {
      window.setTimeout(due, PERIOD);
    }
  }
  window.setTimeout(due, PERIOD);
})();
