// batcher dashboard charts: small inline SVG drawings made with the DOM (no library, no build step,
// nothing loaded from elsewhere). app.js calls them with plain data and its own formatters.
"use strict";

window.batcherCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) el.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const round = (n) => Math.round(n * 10) / 10;

  // The last runs of one job, oldest left: one bar per run, its height the runtime (relative to the
  // longest shown), its colour the outcome; a line over the bars for the records of each run. Every bar
  // has a tooltip (an SVG <title>) with the run's numbers. `points` come newest first (the API's order).
  function runHistory(points, job, fmt) {
    const runs = [...points].reverse();
    const width = 150;
    const height = 34;
    const slot = width / Math.max(runs.length, 10);
    const longest = Math.max(1, ...runs.map((r) => r.runtimeMs || 0));
    const most = Math.max(1, ...runs.map((r) => r.records || 0));
    const bars = runs.map((r, i) => {
      const h = Math.max(2, ((r.runtimeMs || 0) / longest) * (height - 4));
      const tip = `Run #${r.id} · ${r.status}${r.reason && r.reason !== r.status ? ` (${r.reason})` : ""} · `
        + `${fmt.duration(r.runtimeMs)} · ${fmt.count(r.records)} records · ${r.trigger}`
        + `${r.finishedAt ? ` · finished ${fmt.clock(r.finishedAt)}` : ""}`;
      return svg("rect", {
        class: `hbar o-${r.status}`, x: round(i * slot + 1), y: round(height - h), width: round(Math.max(slot - 2, 1)),
        height: round(h), "data-run": r.id, "data-status": r.status,
      }, svg("title", {}, tip));
    });
    const line = runs.length > 1 ? svg("polyline", {
      class: "rec-line", fill: "none",
      points: runs.map((r, i) => `${round(i * slot + slot / 2)},${round(height - 2 - ((r.records || 0) / most) * (height - 6))}`).join(" "),
    }) : null;
    const outcomes = {};
    for (const r of runs) outcomes[r.status] = (outcomes[r.status] || 0) + 1;
    const summary = Object.entries(outcomes).map(([s, n]) => `${n} ${s}`).join(", ");
    const label = `Last ${runs.length} run${runs.length === 1 ? "" : "s"} of ${job}: ${summary}; `
      + `longest ${fmt.duration(longest)}, most records ${fmt.count(most)}`;
    return svg("svg", {
      class: "run-history", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label,
      "data-job": job,
    }, svg("title", {}, label), bars, line);
  }

  // Records over time of one run as this page sampled it: `samples` are {t: epoch ms, v: records},
  // oldest first. The y axis runs from 0 to the largest value, the x axis over the sampled span.
  function recordsOverTime(samples, fmt) {
    const width = 460;
    const height = 110;
    const pad = { left: 8, right: 8, top: 16, bottom: 18 };
    const first = samples[0];
    const last = samples[samples.length - 1];
    const spanMs = Math.max(1, last.t - first.t);
    const most = Math.max(1, ...samples.map((s) => s.v));
    const x = (t) => round(pad.left + ((t - first.t) / spanMs) * (width - pad.left - pad.right));
    const y = (v) => round(height - pad.bottom - (v / most) * (height - pad.top - pad.bottom));
    const seconds = spanMs / 1000;
    const rate = seconds >= 1 ? (last.v - first.v) / seconds : null;
    const label = `Records over time: ${fmt.count(last.v)} after ${fmt.duration(spanMs)}`
      + `${rate === null ? "" : `, about ${fmt.count(Math.round(rate))} per second`} (${samples.length} samples)`;
    const area = `${x(first.t)},${y(0)} ${samples.map((s) => `${x(s.t)},${y(s.v)}`).join(" ")} ${x(last.t)},${y(0)}`;
    return svg("svg", {
      class: "records-chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label,
      "data-samples": samples.length,
    }, svg("title", {}, label),
    svg("line", { class: "axis", x1: pad.left, y1: y(0), x2: width - pad.right, y2: y(0) }),
    svg("polygon", { class: "rec-area", points: area }),
    svg("polyline", { class: "rec-line", fill: "none", points: samples.map((s) => `${x(s.t)},${y(s.v)}`).join(" ") }),
    svg("text", { class: "axis-label", x: pad.left, y: 11 }, `${fmt.count(most)} records`),
    svg("text", { class: "axis-label", x: width - pad.right, y: height - 4, "text-anchor": "end" },
      `${fmt.duration(spanMs)}${rate === null ? "" : ` · ${fmt.count(Math.round(rate))}/s`}`));
  }

  return { runHistory, recordsOverTime };
})();
