// A job's page, live: follows /jobs/{id}/events (server-sent events) and grows the log
// tail and the curves as the job writes them, with no reload. When the job ends the stream
// ends, and the parts of the page marked data-refresh (state, evaluation, confusion matrix,
// attempts, artifacts) are read again from the server.
"use strict";

(function () {
  const ACCURACY_LIKE = ["acc", "f1", "precision", "recall", "auc", "score"];
  const LOG_KEEP = 200000; // characters of log the page keeps

  // Mirrors nimbus.api.console.job_views.chart_of and series_label.
  function chartOf(name) {
    const lowered = name.toLowerCase();
    if (lowered.includes("loss")) { return "loss"; }
    if (ACCURACY_LIKE.some((w) => lowered.includes(w))) { return "accuracy"; }
    return "other";
  }

  function seriesLabel(name, attempt) {
    return attempt <= 1 ? name : name + " (attempt " + attempt + ")";
  }

  function addPoints(points) {
    const changed = new Map();
    points.forEach(([attempt, step, name, value]) => {
      const group = chartOf(name);
      const el = document.querySelector('[data-group="' + group + '"]');
      if (!el || !el.nimbusChart) { return; }
      const spec = changed.get(el) || el.nimbusChart.spec();
      const label = seriesLabel(name, attempt);
      let series = spec.series.find((s) => s.label === label);
      if (!series) {
        series = { label: label, points: [] };
        spec.series.push(series);
      }
      series.points.push([step, value]);
      changed.set(el, spec);
    });
    changed.forEach((spec, el) => {
      const box = el.closest("[hidden]");
      if (box) { box.hidden = false; }
      el.nimbusChart.update(spec);
    });
  }

  function addLog(data) {
    const pre = document.getElementById("job-log");
    if (!pre) { return; }
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.appendChild(document.createTextNode(data));
    if (pre.textContent.length > LOG_KEEP) {
      pre.textContent = pre.textContent.slice(-LOG_KEEP);
    }
    if (atEnd) { pre.scrollTop = pre.scrollHeight; }
  }

  function showState(state) {
    const holder = document.getElementById("job-state");
    if (!holder) { return; }
    const badge = document.createElement("span");
    badge.className = "state state-" + state;
    badge.textContent = state;
    holder.replaceChildren(badge);
  }

  function showProgress(p) {
    const holder = document.getElementById("job-progress");
    if (holder) {
      holder.textContent = "epoch " + p.epoch + "/" + p.epochs + ", batch " + p.batch + "/" + p.batches;
    }
  }

  // The server's page again, its data-refresh parts swapped in (when the job starts and ends).
  async function refresh(ended) {
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) { return; }
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    document.querySelectorAll("[data-refresh]").forEach((old) => {
      const found = fresh.getElementById(old.id);
      if (found) { old.replaceWith(document.importNode(found, true)); }
    });
    if (ended) { document.body.dataset.jobEnded = "true"; }
  }

  function follow(live) {
    const url = live.events + "?log=" + live.log_after + "&metric=" + live.metric_after;
    const source = new EventSource(url);
    const on = (name, handle) => source.addEventListener(name, (e) => handle(JSON.parse(e.data)));
    on("log", (chunk) => addLog(chunk.data));
    on("metrics", (batch) => addPoints(batch.points));
    on("progress", showProgress);
    on("state", (s) => {
      showState(s.state);
      refresh(false); // started: its attempt, start time, Cancel button as they are now
    });
    on("end", (s) => {
      source.close();
      showState(s.state);
      refresh(true);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const live = window.NimbusCharts.readJson("job-live");
    if (live && live.live) { follow(live); }
  });
})();
