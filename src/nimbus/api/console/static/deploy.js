// Try it on a deployment's page: drop an image on the drop zone (or choose one) and see it
// before it is sent. The form itself posts through htmx (or plainly, without scripts).
(function () {
  "use strict";
  function preview(input, img) {
    var file = input.files && input.files[0];
    if (img.dataset.url) { URL.revokeObjectURL(img.dataset.url); delete img.dataset.url; }
    if (!file) { img.hidden = true; img.removeAttribute("src"); return; }
    img.dataset.url = URL.createObjectURL(file);
    img.src = img.dataset.url;
    img.hidden = false;
  }
  function setUp(zone) {
    var input = document.getElementById(zone.dataset.dropzone);
    var img = zone.querySelector("img");
    var text = document.getElementById("try-text");
    if (!input || !img) { return; }
    input.addEventListener("change", function () { preview(input, img); });
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) {
        event.preventDefault();
        zone.classList.add("over");
      });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      var files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) { return; }
      var chosen = new DataTransfer();
      chosen.items.add(files[0]);
      input.files = chosen.files;
      preview(input, img);
      if (text) { text.value = ""; }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-dropzone]").forEach(setUp);
  });
  // htmx swaps only 2xx answers; Try it's refusals (413 before the body is read, a 404)
  // come as the console's error fragment, to be shown where the result goes.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (target && target.id === "try-result" && event.detail.xhr.status >= 400) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
})();
