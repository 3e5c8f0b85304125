// Datasets: upload a file with a progress bar. The file goes as the raw body of
// POST /datasets?name=&filename= (the CSRF token in X-CSRF-Token), so the server streams it
// to disk as the REST upload does; without this script the form posts it as multipart.
"use strict";

(function () {
  function messageOf(xhr) {
    // Errors come back as the console's HTML error page: its alert holds the message.
    try {
      const doc = new DOMParser().parseFromString(xhr.responseText, "text/html");
      const alert = doc.querySelector("[role=alert]");
      if (alert && alert.textContent.trim()) return alert.textContent.trim();
    } catch (e) { /* not HTML: fall through */ }
    return "the upload failed (HTTP " + xhr.status + ")";
  }

  function start(form) {
    const name = form.querySelector("#upload-name");
    const file = form.querySelector("#upload-file");
    const bar = form.querySelector("#upload-progress");
    const status = form.querySelector("#upload-status");
    const error = form.querySelector("#upload-error");
    const button = form.querySelector("button[type=submit]");
    const chosen = file.files && file.files[0];
    if (!chosen) return;
    const query = new URLSearchParams({ name: name.value.trim(), filename: chosen.name });
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/datasets?" + query.toString());
    xhr.setRequestHeader("X-CSRF-Token", form.querySelector("input[name=csrf]").value);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    bar.max = chosen.size || 1;
    bar.value = 0;
    error.textContent = "";
    status.textContent = "Uploading " + chosen.name + "…";
    button.disabled = true;
    xhr.upload.onprogress = function (event) {
      if (event.lengthComputable) {
        bar.max = event.total || 1;
        bar.value = event.loaded;
      }
    };
    xhr.upload.onload = function () {
      bar.value = bar.max;
      status.textContent = "Uploaded; preparing the dataset…";
    };
    xhr.onload = function () {
      button.disabled = false;
      if (xhr.status >= 200 && xhr.status < 300) {
        const made = JSON.parse(xhr.responseText);
        bar.value = bar.max;
        status.textContent = (xhr.status === 201 ? "Uploaded as " : "Already uploaded as ");
        const link = document.createElement("a");
        link.href = made.url;
        link.textContent = made.dataset + ":" + made.version;
        status.appendChild(link);
      } else {
        status.textContent = "";
        error.textContent = messageOf(xhr);
      }
    };
    xhr.onerror = function () {
      button.disabled = false;
      status.textContent = "";
      error.textContent = "the upload failed: the server could not be reached";
    };
    xhr.send(chosen);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.getElementById("upload-form");
    if (!form) return;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      start(form);
    });
  });
})();
