// Starts ReDoc on /docs. ReDoc's styles are <style> elements it writes at run time; the page's
// Content-Security-Policy admits them only with this script's nonce, which ReDoc copies onto each.
"use strict";
(function () {
  const root = document.getElementById("redoc");
  const nonce = document.currentScript ? document.currentScript.nonce : "";
  window.Redoc.init(root.dataset.specUrl, { nonce: nonce, hideLoading: false }, root);
})();
