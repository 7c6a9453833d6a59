// batcher dashboard: plain JavaScript over the admin API (/api/batch/...), no build step, no outside assets.
//
// Every few seconds it reads the jobs, the latest run and the last runs (charts) of each job, the running
// and recent runs, the dead letters, the daemon's status and whether its API is read-only, and redraws.
// Changes (trigger, pause, resume, cancel) send the API token as "Authorization: Bearer"; the token is asked
// for once and kept in sessionStorage, i.e. in this tab only. A "#token=..." fragment in the URL (what
// `make demo` prints) is taken and removed from the address bar. A read-only daemon (no BATCHER_API_TOKEN)
// gets a banner and disabled change buttons instead, and no token is asked for.
// The charts are drawn by charts.js (window.batcherCharts).
"use strict";

(() => {
  const API = "/api/batch";
  const REFRESH_MS = 2000;
  const TOKEN_KEY = "batcher.apiToken";
  const FINISHED = new Set(["succeeded", "failed", "cancelled", "skipped"]);
  const HISTORY_RUNS = 20;  // runs per job in the jobs table's charts
  const MAX_SAMPLES = 150;  // records-over-time samples kept for the open run (about 5 min at 2 s)
  const charts = window.batcherCharts;

  const state = {
    jobs: {}, latest: {}, running: [], runs: [], deadLetters: [], status: null, info: null, history: {},
    samples: { runId: null, points: [] },
    openRunId: null, openRunJson: "", auto: true, timer: null, busy: null, again: false, connected: null,
    memoryToken: null, returnKey: null,
  };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------------------------------ DOM helpers

  // h("button", {class: "x", onclick: fn, "aria-label": "..."}, "text", childNode, ...)
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function button(label, onclick, attrs) {
    return h("button", { type: "button", onclick, ...attrs }, label);
  }

  // Redraws replace rows; the focused control is found again by its data-key so keyboard users keep their place.
  function focusedKey() {
    const el = document.activeElement;
    return el && el.dataset ? el.dataset.key || null : null;
  }

  function restoreFocus(key) {
    if (!key || (document.activeElement && document.activeElement.dataset.key === key)) return;
    const el = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (el) el.focus({ preventScroll: true });
  }

  // ------------------------------------------------------------------------------------------- formatting

  function parseTime(iso) {
    return iso ? new Date(iso) : null;
  }

  function clock(iso) {
    const t = parseTime(iso);
    if (!t) return "—";
    const sameDay = t.toDateString() === new Date().toDateString();
    const time = t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return sameDay ? time : `${t.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  function span(seconds) {
    const s = Math.abs(seconds);
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    if (s < 86400) return `${(s / 3600).toFixed(s < 36000 ? 1 : 0)} h`;
    return `${Math.round(s / 86400)} d`;
  }

  function relative(iso) {
    const t = parseTime(iso);
    if (!t) return "—";
    const seconds = (t.getTime() - Date.now()) / 1000;
    if (Math.abs(seconds) < 2) return "just now";
    return seconds > 0 ? `in ${span(seconds)}` : `${span(seconds)} ago`;
  }

  function timeCell(iso) {
    const t = parseTime(iso);
    return t ? h("time", { datetime: iso, title: t.toLocaleString() }, relative(iso)) : "—";
  }

  function duration(ms) {
    if (ms === null || ms === undefined) return "—";
    if (ms < 1000) return `${ms} ms`;
    return span(ms / 1000);
  }

  function count(n) {
    return (n ?? 0).toLocaleString();
  }

  function bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    const i = Math.min(units.length - 1, Math.floor(Math.log2(n) / 10));
    return `${(n / 1024 ** i).toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function schedule(job) {
    if (job.dependsOn && job.dependsOn.length) return `after ${job.dependsOn.join(", ")}`;
    if (job.cron) return `cron ${job.cron}${job.timezone && job.timezone !== "UTC" ? ` (${job.timezone})` : ""}`;
    if (job.intervalMinutes) return job.intervalMinutes === 1 ? "every minute" : `every ${job.intervalMinutes} min`;
    return "manual only";
  }

  function badge(status, extra) {
    return h("span", { class: `badge s-${status}` }, status, extra && extra !== status ? ` · ${extra}` : null);
  }

  // The progress jsonb: "records" (committed by this run, added by the runtime), and what the handler
  // reported: "done" and "total". Handlers use "done" two ways: as their position, counting everything
  // this run handled (DataSync, usage: then done >= records), or as what earlier attempts already did,
  // reported once at the start (synthetic: then records passes it, and the two add up). The bar never
  // goes backwards and never past the total.
  function progressOf(run) {
    const p = run.progress || {};
    const records = Number(p.records || run.records || 0);
    const reported = Number(p.done || 0);
    const done = reported >= records ? reported : reported + records;
    const total = p.total === undefined || p.total === null ? null : Number(p.total);
    return { done, total, records, pct: total ? Math.min(100, Math.round((100 * done) / total)) : null };
  }

  function progressBar(run) {
    const { done, total, pct } = progressOf(run);
    const text = total ? `${count(done)} / ${count(total)} (${pct}%)` : `${count(done)} done`;
    const fill = h("div", { class: "bar-fill" });
    if (pct !== null) fill.style.width = `${pct}%`;
    const bar = h("div", {
      class: `bar${pct === null ? " indeterminate" : ""}`, role: "progressbar",
      "aria-label": `Progress of run ${run.id} (${run.jobName})`,
      "aria-valuemin": pct === null ? null : 0, "aria-valuemax": pct === null ? null : 100,
      "aria-valuenow": pct, "aria-valuetext": text,
    }, fill);
    return h("div", { class: "progress" }, bar, h("span", { class: "bar-text" }, text));
  }

  // ----------------------------------------------------------------------------------- notices and token

  let noticeTimer = null;

  function notice(message, kind) {
    const el = $("notice");
    el.textContent = message;
    el.className = `notice ${kind || "info"}`;
    el.hidden = false;
    clearTimeout(noticeTimer);
    if (kind !== "error") noticeTimer = setTimeout(() => { el.hidden = true; }, 6000);
  }

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return state.memoryToken || null;
    }
  }

  function setToken(value) {
    state.memoryToken = value || null;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage disabled: the variable above keeps it for this page
    }
    $("token-button").textContent = value ? "Change token" : "Set token";
  }

  function takeTokenFromUrl() {
    const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (!match) return;
    setToken(decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }

  // Resolves with the token entered, or null when the dialog was cancelled (Escape, Cancel). A second
  // change clicked while the dialog is open waits for the same answer.
  function askToken() {
    const dialog = $("token-dialog");
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? token() : null), { once: true });
      if (dialog.open) return;
      $("token-input").value = "";
      dialog.returnValue = "";
      dialog.showModal();
      $("token-input").focus();
    });
  }

  // Registered before any askToken listener, so the token is stored before they read it.
  function onTokenDialogClose() {
    const dialog = $("token-dialog");
    const value = $("token-input").value.trim();
    $("token-input").value = "";
    if (dialog.returnValue === "ok" && value) setToken(value);
    else if (dialog.returnValue === "ok") dialog.returnValue = "";
  }

  // ------------------------------------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function call(method, path, body, bearer) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const response = await fetch(path.startsWith("/api/") ? path : API + path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok || !data || data.success === false) {
      const err = (data && data.error) || {};
      throw new ApiError(response.status, err.code || "http_error", err.message || `HTTP ${response.status}`);
    }
    return data;
  }

  const get = (path) => call("GET", path);

  // ------------------------------------------------------------------------------------------ read-only

  function readOnly() {
    return Boolean(state.info && state.info.readOnly);
  }

  // A change button: disabled, with a tooltip saying why, when the daemon is read-only.
  function changeAttrs(attrs) {
    if (!readOnly()) return attrs;
    return {
      ...attrs, disabled: true, "aria-describedby": "readonly-banner",
      title: `Read-only dashboard: the daemon has no API token; ${state.info.howToAllowChanges}`,
    };
  }

  function renderInfo() {
    const banner = $("readonly-banner");
    banner.hidden = !readOnly();
    if (readOnly()) {
      const how = state.info.howToAllowChanges;
      $("readonly-how").textContent = how.charAt(0).toUpperCase() + how.slice(1);
    }
    $("token-button").hidden = readOnly();
  }

  // A change: asks for the token when there is none, and once more when the daemon refuses it.
  async function change(path, body, what) {
    if (readOnly()) {
      notice(`${what}: the dashboard is read-only (${state.info.howToAllowChanges})`, "error");
      return null;
    }
    for (let attempt = 0; attempt < 2; attempt += 1) {
      let bearer = token();
      if (!bearer) {
        bearer = await askToken();
        if (!bearer) {
          notice(`${what}: cancelled (no API token)`, "info");
          return null;
        }
      }
      try {
        const data = await call("POST", path, body ?? {}, bearer);
        notice(data.message || `${what}: done`, "ok");
        refreshSoon(0);
        return data;
      } catch (err) {
        if (err instanceof ApiError && err.status === 401 && attempt === 0) {
          setToken(null);
          notice("The daemon refused that token; enter it again.", "error");
          continue;
        }
        if (err instanceof ApiError && err.code === "read_only") refreshSoon(0);  // learn it, disable the buttons
        notice(`${what} failed: ${err.message}`, "error");
        return null;
      }
    }
    return null;
  }

  const enc = encodeURIComponent;

  function trigger(job) {
    return change("/trigger", { jobName: job }, `Trigger ${job}`);
  }

  function setPaused(job, paused) {
    return change(`/jobs/${enc(job)}/${paused ? "pause" : "resume"}`, {}, `${paused ? "Pause" : "Resume"} ${job}`);
  }

  function cancelRun(id) {
    return change(`/runs/${id}/cancel`, {}, `Cancel run ${id}`);
  }

  // ----------------------------------------------------------------------------------------------- jobs

  function renderJobs() {
    const tbody = $("jobs").tBodies[0];
    const names = Object.keys(state.jobs).sort();
    const running = new Set(state.running.map((r) => r.jobName));
    const rows = names.map((name) => {
      const job = state.jobs[name];
      // A run in progress is the job's news, not a skipped occurrence queued after it (overlap).
      const last = state.running.find((r) => r.jobName === name) || state.latest[name];
      const stateCell = h("td", { class: "state" },
        job.paused ? badge("paused") : null,
        job.enabled ? h("span", { class: "tag on" }, "enabled") : h("span", { class: "tag off" }, "disabled"),
        running.has(name) ? badge("running") : null,
        job.orphaned ? h("span", { class: "tag off", title: "no longer in the config file" }, "orphaned") : null);
      const scheduled = job.enabled && !job.paused && job.nextRunAt;
      const lastCell = last
        ? h("td", {}, button(badge(last.status, last.reason), () => openRun(last.id), {
          class: "link", "data-key": `job-last-${name}`,
          "aria-label": `Latest run of ${name}: ${last.status}, run ${last.id}; show details`,
        }), " ", h("span", { class: "muted" }, timeCell(last.finishedAt || last.startedAt || last.queuedAt)))
        : h("td", { class: "muted" }, "no runs yet");
      const history = state.history[name] || [];
      const chartCell = h("td", { class: "chart" }, history.length
        ? charts.runHistory(history, name, { duration, count, clock })
        : h("span", { class: "muted" }, "—"));
      const actions = h("td", { class: "actions" },
        button("Trigger", () => trigger(name), changeAttrs({ "data-key": `trigger-${name}`, "aria-label": `Trigger ${name} now` })),
        job.paused
          ? button("Resume", () => setPaused(name, false), changeAttrs({ "data-key": `pause-${name}`, "aria-label": `Resume ${name}` }))
          : button("Pause", () => setPaused(name, true), changeAttrs({ "data-key": `pause-${name}`, "aria-label": `Pause ${name}` })),
        button("Dead letters", () => showDeadLetters(name), {
          "data-key": `dl-${name}`, "aria-label": `Show dead letters of ${name}`,
        }));
      return h("tr", { "data-job": name, class: job.paused ? "paused" : null },
        h("th", { scope: "row" }, h("span", { class: "job-name" }, name), h("span", { class: "muted type" }, job.jobType)),
        stateCell,
        h("td", {}, schedule(job)),
        h("td", {}, scheduled ? timeCell(job.nextRunAt)
          : h("span", { class: "muted" }, job.paused ? "paused" : job.enabled ? "—" : "not scheduled")),
        lastCell,
        chartCell,
        h("td", {}, job.lastSuccessAt ? timeCell(job.lastSuccessAt) : h("span", { class: "muted" }, "never")),
        actions);
    });
    tbody.replaceChildren(...rows);
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No jobs configured.")));
    fillJobSelect($("runs-job"));
    fillJobSelect($("dl-job"));
  }

  function fillJobSelect(select) {
    const names = Object.keys(state.jobs).sort();
    const have = [...select.options].slice(1).map((o) => o.value);
    if (have.join("\n") === names.join("\n")) return;
    const current = select.value;
    select.replaceChildren(h("option", { value: "" }, "all jobs"), ...names.map((n) => h("option", { value: n }, n)));
    select.value = names.includes(current) ? current : "";
  }

  // ------------------------------------------------------------------------------------------- running

  function renderRunning() {
    const list = $("running");
    const items = state.running.map((run) => {
      const cancelling = Boolean(run.cancelRequested);
      return h("li", { class: "run-card", "data-run": run.id },
        h("div", { class: "run-card-head" },
          h("strong", {}, run.jobName),
          h("span", { class: "muted" }, ` run ${run.id} · ${run.trigger} · started `, timeCell(run.startedAt)),
          h("span", { class: "spacer" }),
          button("Details", () => openRun(run.id), {
            "data-key": `running-details-${run.id}`, "aria-label": `Details of run ${run.id} (${run.jobName})`,
          }),
          button(cancelling ? "Cancelling…" : "Cancel", () => cancelRun(run.id), changeAttrs({
            class: "danger", disabled: cancelling, "data-key": `running-cancel-${run.id}`,
            "aria-label": `Cancel run ${run.id} (${run.jobName})`,
          }))),
        progressBar(run));
    });
    list.replaceChildren(...items);
    $("running-empty").hidden = items.length > 0;
  }

  // ---------------------------------------------------------------------------------------------- runs

  function renderRuns() {
    const tbody = $("runs").tBodies[0];
    const rows = state.runs.map((run) => {
      const active = !FINISHED.has(run.status);
      const runtime = run.status === "running" && run.startedAt
        ? `${span((Date.now() - parseTime(run.startedAt)) / 1000)} so far` : duration(run.runtimeMs);
      return h("tr", { "data-run": run.id, class: `r-${run.status}` },
        h("td", { class: "run-id" }, `#${run.id}`),
        h("td", {}, run.jobName),
        h("td", {}, badge(run.status, run.reason)),
        h("td", {}, run.trigger, run.attempt > 1 ? h("span", { class: "muted" }, ` (attempt ${run.attempt})`) : null),
        h("td", {}, h("time", { datetime: run.queuedAt, title: parseTime(run.queuedAt).toLocaleString() }, clock(run.queuedAt))),
        h("td", {}, runtime),
        h("td", { class: "num" }, count(run.records)),
        h("td", { class: "num" }, run.deadLetters ? h("strong", { class: "warn" }, count(run.deadLetters)) : "0"),
        h("td", { class: "actions" },
          button("Details", () => openRun(run.id), {
            "data-key": `run-details-${run.id}`, "aria-label": `Details of run ${run.id} (${run.jobName})`,
          }),
          active ? button("Cancel", () => cancelRun(run.id), changeAttrs({
            class: "danger", "data-key": `run-cancel-${run.id}`, disabled: Boolean(run.cancelRequested),
            "aria-label": `Cancel run ${run.id} (${run.jobName})`,
          })) : null));
    });
    tbody.replaceChildren(...rows);
    if (!rows.length) tbody.append(h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No runs match.")));
  }

  // -------------------------------------------------------------------------------------- dead letters

  function renderDeadLetters() {
    const tbody = $("dead-letters").tBodies[0];
    const rows = state.deadLetters.map((d) => h("tr", {},
      h("td", {}, d.jobName),
      h("td", {}, d.runId ? button(`#${d.runId}`, () => openRun(d.runId), {
        class: "link", "data-key": `dl-run-${d.id}`, "aria-label": `Details of run ${d.runId}`,
      }) : "—"),
      h("td", {}, d.stream),
      h("td", {}, d.origin),
      h("td", { class: "reason" }, d.reason),
      h("td", {}, h("code", { class: "payload", title: d.payload }, d.payload.length > 120 ? `${d.payload.slice(0, 120)}…` : d.payload)),
      h("td", {}, timeCell(d.createdAt))));
    tbody.replaceChildren(...rows);
    $("dl-empty").hidden = rows.length > 0;
    const job = $("dl-job").value;
    $("dl-empty").textContent = job ? `No open dead letters for ${job}.` : "No open dead letters.";
  }

  function showDeadLetters(job) {
    $("dl-job").value = job;
    refresh().then(() => {
      $("dl-heading").scrollIntoView({ block: "start" });
      $("dl-job").focus({ preventScroll: true });
    });
  }

  // ---------------------------------------------------------------------------------------- run details

  function openRun(id) {
    if (!$("run-dialog").open) state.returnKey = focusedKey();
    state.openRunId = id;
    state.openRunJson = "";
    $("run-title").textContent = `Run #${id}`;
    $("run-body").replaceChildren(h("p", { class: "muted" }, "loading…"));
    const dialog = $("run-dialog");
    if (!dialog.open) dialog.showModal();
    return loadRun();
  }

  async function loadRun() {
    const id = state.openRunId;
    if (id === null) return;
    try {
      const { run } = await get(`/runs/${id}`);
      if (state.openRunId !== id) return;
      sample(run);
      const json = JSON.stringify(run) + state.samples.points.length;
      if (json === state.openRunJson) return;
      state.openRunJson = json;
      renderRun(run);
    } catch (err) {
      if (state.openRunId === id) $("run-body").replaceChildren(h("p", { class: "error" }, `Cannot load run ${id}: ${err.message}`));
    }
  }

  // Records over time of the open run: one sample per refresh while it runs (the first at its start,
  // with none), at most MAX_SAMPLES (the oldest are dropped, the start kept); when it finishes, its final
  // count once. A run first seen finished has no samples (and no chart).
  function sample(run) {
    const s = state.samples;
    if (s.runId !== run.id) {
      s.runId = run.id;
      s.points = [];
    }
    if (!s.points.length) {
      if (run.status !== "running" || !run.startedAt) return;
      s.points.push({ t: parseTime(run.startedAt).getTime(), v: 0 });
    }
    const last = s.points[s.points.length - 1];
    if (last.final) return;
    const done = FINISHED.has(run.status);
    const t = done && run.finishedAt ? parseTime(run.finishedAt).getTime() : Date.now();
    s.points.push({ t: Math.max(t, last.t), v: progressOf(run).records, final: done });
    if (s.points.length > MAX_SAMPLES) s.points.splice(1, 1);
  }

  function recordsChart(run) {
    const points = state.samples.runId === run.id ? state.samples.points : [];
    if (points.length < 2) return null;
    return h("section", { class: "records-over-time", "aria-label": "Records over time" },
      h("h3", {}, "Records over time"), charts.recordsOverTime(points, { duration, count }));
  }

  function fact(label, value) {
    return h("div", {}, h("dt", {}, label), h("dd", {}, value ?? "—"));
  }

  function renderRun(run) {
    const body = $("run-body");
    const wasOpen = {};
    for (const d of body.querySelectorAll("details[data-part]")) wasOpen[d.dataset.part] = d.open;
    const key = focusedKey();
    $("run-title").textContent = `Run #${run.id} · ${run.jobName}`;
    const active = !FINISHED.has(run.status);
    const head = h("div", { class: "run-status" }, badge(run.status, run.reason),
      run.cancelRequested ? h("span", { class: "muted" }, ` cancel requested: ${run.cancelRequested}`) : null,
      h("span", { class: "spacer" }),
      active ? button("Cancel run", () => cancelRun(run.id), changeAttrs({
        class: "danger", "data-key": `detail-cancel-${run.id}`, disabled: Boolean(run.cancelRequested),
        "aria-label": `Cancel run ${run.id} (${run.jobName})`,
      })) : null);
    const facts = h("dl", { class: "facts" },
      fact("Job", `${run.jobName} (${run.jobType})`),
      fact("Trigger", `${run.trigger}${run.attempt > 1 ? `, attempt ${run.attempt}` : ""}${run.retryOf ? `, retry of #${run.retryOf}` : ""}`),
      fact("Queued", clock(run.queuedAt)),
      fact("Started", clock(run.startedAt)),
      fact("Finished", clock(run.finishedAt)),
      fact("Runtime", run.status === "running" && run.startedAt
        ? `${span((Date.now() - parseTime(run.startedAt)) / 1000)} so far` : duration(run.runtimeMs)),
      fact("Worker", run.workerId));
    const counters = h("dl", { class: "facts counters", "aria-label": "Counters" },
      fact("Records", count(run.records)),
      fact("Dead letters", count(run.deadLetters)),
      fact("Items checked", count(run.itemsChecked)),
      fact("Items updated", count(run.itemsUpdated)),
      fact("API calls", count(run.apiCalls)),
      fact("Ingress", bytes(run.ingressBytes)),
      fact("Abandons", count(run.abandons)));
    const errors = run.errors && run.errors.length
      ? h("section", { class: "errors", "aria-label": "Errors" }, h("h3", {}, `Errors (${run.errors.length})`),
        h("ul", {}, run.errors.map((e) => h("li", {}, typeof e === "string" ? e : JSON.stringify(e)))))
      : h("p", { class: "muted" }, "No errors.");
    const reasons = (run.progress && run.progress.dead_letter_reasons) || [];
    const deadLetterReasons = reasons.length
      ? h("section", { class: "dead-letter-reasons", "aria-label": "Dead-letter reasons" },
        h("h3", {}, `Dead letters: ${count(run.deadLetters)} (reasons: ${reasons.length})`),
        h("ul", {}, reasons.map((r) => h("li", {}, String(r)))))
      : null;
    const logs = h("details", { "data-part": "logs", class: "logs", open: wasOpen.logs || null },
      h("summary", { "data-key": "detail-logs" }, `Logs (${run.logs.length})`),
      run.logs.length
        ? h("div", { class: "table-wrap" }, h("table", { class: "log-table" },
          h("thead", {}, h("tr", {}, ["#", "Time", "Level", "Event", "Fields"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, run.logs.map((l) => h("tr", { class: `l-${l.level}` },
            h("td", { class: "num" }, l.seq), h("td", {}, clock(l.at)), h("td", {}, l.level), h("td", {}, l.event),
            h("td", {}, h("code", {}, Object.keys(l.fields || {}).length ? JSON.stringify(l.fields) : "")))))))
        : h("p", { class: "muted" }, "No log entries."));
    const params = h("details", { "data-part": "params", open: wasOpen.params || null },
      h("summary", { "data-key": "detail-params" }, "Params, progress and result"),
      h("pre", {}, JSON.stringify({ params: run.params, progress: run.progress, result: run.result }, null, 2)));
    body.replaceChildren(...[head, active ? progressBar(run) : null, recordsChart(run), facts, counters, errors,
      deadLetterReasons, logs, params].filter(Boolean));
    restoreFocus(key);
  }

  // The native dialog gives focus back to the control that opened it, unless a refresh replaced that
  // control meanwhile: then its replacement (same data-key) gets it.
  function closeRun() {
    state.openRunId = null;
    state.samples = { runId: null, points: [] };
    state.openRunJson = "";
    const key = state.returnKey;
    state.returnKey = null;
    setTimeout(() => restoreFocus(key), 0);
  }

  // --------------------------------------------------------------------------------------------- refresh

  function runsQuery() {
    const params = new URLSearchParams({ limit: "25" });
    if ($("runs-job").value) params.set("job", $("runs-job").value);
    if ($("runs-status").value) params.set("status", $("runs-status").value);
    return params.toString();
  }

  function dlQuery() {
    const params = new URLSearchParams({ limit: "50" });
    if ($("dl-job").value) params.set("job", $("dl-job").value);
    return params.toString();
  }

  function renderDaemon() {
    const el = $("daemon");
    const s = state.status;
    if (!s) return;
    const sched = s.scheduler;
    const live = s.workers.filter((w) => w.alive).length;
    el.replaceChildren(
      h("span", { class: `dot ${sched.isRunning ? "ok" : "bad"}`, "aria-hidden": "true" }),
      sched.isRunning ? "scheduler running" : sched.isInitialized ? "scheduler stalled" : "no scheduler in this process",
      ` · ${live} live worker${live === 1 ? "" : "s"} · ${s.registeredJobs.length} jobs · ${s.runningJobs.length} running`);
  }

  // One refresh at a time: a call while one is under way asks for another right after it, and every caller
  // gets a promise that settles once data at least as new as its call is on screen.
  function refresh() {
    if (state.busy) {
      state.again = true;
      return state.busy;
    }
    state.busy = (async () => {
      do {
        state.again = false;
        await refreshOnce();
      } while (state.again);
    })().finally(() => { state.busy = null; });
    return state.busy;
  }

  async function refreshOnce() {
    const key = focusedKey();
    try {
      const [config, latest, running, runs, dead, status, info, history] = await Promise.all([
        get("/config"), get("/runs/latest?byJobType=true"), get("/runs?status=running&limit=100"),
        get(`/runs?${runsQuery()}`), get(`/dead-letters?${dlQuery()}`), get("/status"), get("/api/info"),
        get(`/jobs/history?runs=${HISTORY_RUNS}`),
      ]);
      state.info = info;
      state.history = history.history;
      state.jobs = config.config;
      state.latest = latest.runs;
      state.running = running.runs;
      state.runs = runs.runs;
      state.deadLetters = dead.deadLetters;
      state.status = status.status;
      renderInfo();
      renderDaemon();
      renderJobs();
      renderRunning();
      renderRuns();
      renderDeadLetters();
      restoreFocus(key);
      if (state.connected === false) notice("Connected to the daemon again.", "ok");
      state.connected = true;
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
      await loadRun();
    } catch (err) {
      if (state.connected !== false) notice(`Cannot read from the daemon: ${err.message}`, "error");
      state.connected = false;
      $("daemon").textContent = "daemon unreachable";
    }
  }

  function refreshSoon(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => {
      if (!document.hidden) await refresh();
      if (state.auto) refreshSoon(REFRESH_MS);
    }, delay);
  }

  // ------------------------------------------------------------------------------------------------ start

  function start() {
    takeTokenFromUrl();
    setToken(token());
    $("refresh").addEventListener("click", () => refreshSoon(0));
    $("auto").addEventListener("click", (event) => {
      state.auto = !state.auto;
      event.currentTarget.setAttribute("aria-pressed", String(state.auto));
      event.currentTarget.textContent = state.auto ? "Auto-refresh on" : "Auto-refresh off";
      if (state.auto) refreshSoon(0);
      else clearTimeout(state.timer);
    });
    $("token-button").addEventListener("click", async () => {
      if (await askToken()) notice("Token set for this tab.", "ok");
    });
    for (const id of ["runs-job", "runs-status", "dl-job"]) $(id).addEventListener("change", () => refreshSoon(0));
    for (const el of document.querySelectorAll("dialog [data-close]")) {
      el.addEventListener("click", () => el.closest("dialog").close());
    }
    $("run-dialog").addEventListener("close", closeRun);
    $("token-dialog").addEventListener("close", onTokenDialogClose);
    $("run-dialog").addEventListener("click", (event) => {  // a click on the backdrop closes it
      if (event.target === event.currentTarget) event.currentTarget.close();
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && state.auto) refreshSoon(0);
    });
    refreshSoon(0);
  }

  start();
})();
