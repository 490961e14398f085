// The weekly report's print button (a static file: the page's CSP allows no inline script).
(function () {
  "use strict";
  var b = document.querySelector("[data-print]");
  if (b) { b.addEventListener("click", function () { window.print(); }); }
})();
