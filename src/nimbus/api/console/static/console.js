// Nimbus console: what every page shares. Charts (uPlot) are drawn from JSON data blocks
// the server renders (<script type="application/json">); no inline script runs (CSP).
"use strict";

(function () {
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

  // Align series of [x, y] points on the union of their x values (uPlot wants one x axis).
  function align(series) {
    const xs = new Set();
    series.forEach((s) => s.points.forEach((p) => xs.add(p[0])));
    const x = Array.from(xs).sort((a, b) => a - b);
    const index = new Map(x.map((v, i) => [v, i]));
    const ys = series.map((s) => {
      const y = new Array(x.length).fill(null);
      s.points.forEach((p) => { y[index.get(p[0])] = p[1]; });
      return y;
    });
    return [x, ...ys];
  }

  function options(el, spec, log) {
    const width = Math.max(280, el.clientWidth || 600);
    return {
      width: width,
      height: spec.height || 260,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [
        { label: spec.x_label || "step" },
        { label: spec.y_label || "", size: 60 },
      ],
      series: [{ label: spec.x_label || "step" }].concat(
        spec.series.map((s, i) => ({
          label: s.label,
          stroke: s.color || PALETTE[i % PALETTE.length],
          width: 2,
          spanGaps: true,
          points: { show: true, size: 5 },
        }))
      ),
      legend: { show: true },
    };
  }

  // A chart in ``el`` for ``spec`` ({series: [{label, points: [[x, y]...]}], x_label,
  // y_label, log}); the handle's update(spec) redraws it with new points.
  function render(el, spec) {
    let current = spec;
    let log = !!spec.log;
    let plot = null;
    const box = document.createElement("div");
    el.appendChild(box);
    function draw() {
      if (plot) { plot.destroy(); }
      box.textContent = "";
      const positive = current.series.every((s) => s.points.every((p) => p[1] === null || p[1] > 0));
      plot = new uPlot(options(el, current, log && positive), align(current.series), box);
      el.dataset.points = String(current.series.reduce((n, s) => n + s.points.length, 0));
    }
    const toggle = el.querySelector("input[data-log-scale]");
    if (toggle) {
      toggle.checked = log;
      toggle.addEventListener("change", () => { log = toggle.checked; draw(); });
    }
    draw();
    return {
      update(next) { current = next; draw(); },
      spec() { return current; },
    };
  }

  function readJson(id) {
    const block = document.getElementById(id);
    return block ? JSON.parse(block.textContent) : null;
  }

  function initCharts(root) {
    root.querySelectorAll("[data-chart]").forEach((el) => {
      if (el.nimbusChart) { return; }
      const spec = readJson(el.dataset.chart);
      if (spec) { el.nimbusChart = render(el, spec); }
    });
  }

  window.NimbusCharts = { render: render, readJson: readJson, init: initCharts, palette: PALETTE };

  document.addEventListener("DOMContentLoaded", () => initCharts(document));
  document.addEventListener("htmx:afterSwap", (event) => initCharts(event.target));
})();
