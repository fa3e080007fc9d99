// The a2c-service dashboard: jobs table, new-job form, a job view whose learning curves
// follow GET /jobs/{id}/metrics/stream live, a compare view and a sweep view.
//
// Auth: when the API answers 401, the page asks for the token once, keeps it in sessionStorage
// (this tab only) and sends it as "Authorization: Bearer ..." on every call. EventSource cannot
// send headers, so the metrics stream is read with fetch() and parsed here: the token never goes
// into a URL (nor, so, into server logs or browser history). Downloads are fetched the same way
// and handed to the browser as blobs.
"use strict";

const TOKEN_KEY = "a2c-api-token";
const POLL_MS = 2000;
const $ = sel => document.querySelector(sel);

// ---------------------------------------------------------------- API access

let tokenPrompt = null;

/** fetch() with the bearer token; on 401, ask for the token and try again. */
async function api(path, options = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", "Bearer " + token);
    let res;
    try {
      res = await fetch(path, {...options, headers});
    } catch (err) {
      if (err.name === "AbortError") throw err;
      setConn(false, "API unreachable");
      throw err;
    }
    setConn(true);
    if (res.status !== 401) return res;
    await askToken(token ? "The server refused that token." : "");
  }
}

/** JSON of a successful call; throws with the server's detail otherwise. */
async function apiJson(path, options) {
  const res = await api(path, options);
  const body = await res.json().catch(() => null);
  if (!res.ok) throw Object.assign(new Error(detailText(body) || res.statusText), {status: res.status, body});
  return body;
}

function detailText(body) {
  if (!body || body.detail === undefined) return "";
  if (typeof body.detail === "string") return body.detail;
  return body.detail.map(d => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
}

/** Show the token dialog (once, however many calls wait on it); resolves when a token is saved. */
function askToken(message) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise(resolve => {
      const dialog = $("#token-dialog"), form = $("#token-form"), err = $("#token-error");
      err.textContent = message; err.hidden = !message;
      $("#token-input").value = "";
      form.onsubmit = ev => {
        ev.preventDefault();
        const value = $("#token-input").value.trim();
        if (!value) return;
        sessionStorage.setItem(TOKEN_KEY, value);
        $("#token-change").hidden = false;
        dialog.close();
        tokenPrompt = null;
        resolve();
      };
      dialog.oncancel = ev => ev.preventDefault();  // the page cannot work without it
      dialog.showModal();
      $("#token-input").focus();
    });
  }
  return tokenPrompt;
}

function setConn(ok, text) {
  const el = $("#conn");
  el.className = "conn " + (ok ? "ok" : "bad");
  el.textContent = ok ? "connected" : text;
}

/** Read a server-sent event stream with fetch (so the token goes in a header, not the URL). */
async function readEvents(path, onEvent, signal) {
  const res = await api(path, {signal, headers: {Accept: "text/event-stream"}});
  if (!res.ok) throw Object.assign(new Error(`${res.status} ${res.statusText}`), {status: res.status});
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "", data = [], event = "message", id = null;
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += value;
    for (;;) {
      const m = /\r\n|\n|\r/.exec(buf);
      if (!m || (m[0] === "\r" && m.index === buf.length - 1)) break;  // a CRLF may be split
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === "") {
        if (data.length) onEvent({event, id, data: data.join("\n")});
        data = []; event = "message";
      } else if (!line.startsWith(":")) {
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        const val = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
        if (field === "data") data.push(val);
        else if (field === "event") event = val;
        else if (field === "id") id = val;
      }
    }
  }
}

/** Fetch a file with the token and hand it to the browser as a download. */
async function download(path, fallbackName) {
  const res = await api(path);
  if (!res.ok) throw new Error(detailText(await res.json().catch(() => null)) || res.statusText);
  const disposition = res.headers.get("Content-Disposition") || "";
  const name = (/filename="?([^";]+)"?/.exec(disposition) || [])[1] || fallbackName;
  const url = URL.createObjectURL(await res.blob());
  const a = Object.assign(document.createElement("a"), {href: url, download: name});
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---------------------------------------------------------------- small helpers

const FINISHED = new Set(["SUCCEEDED", "FAILED", "STOPPED"]);

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter(c => c !== null && c !== undefined));
  return node;
}

function badge(status) { return el("span", {className: "badge " + status.toLowerCase(), textContent: status}); }

function progressBar(fraction, text) {
  const bar = el("div", {className: "progress"});
  bar.append(el("div", {className: "progress-fill", style: `width:${(fraction * 100).toFixed(1)}%`}),
             el("span", {className: "progress-text", textContent: text}));
  return bar;
}

function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  const pad = n => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

const num = (v, digits = 1) => (typeof v === "number" && isFinite(v)) ? v.toFixed(digits) : "—";
const bytes = n => n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : (n / 1024).toFixed(1) + " KiB";
const steps = n => n.toLocaleString("en-US");

// ---------------------------------------------------------------- jobs view: the runs table

const details = new Map();  // job id -> its GET /jobs/{id} (mean return, evaluation); final once it ended
const selected = new Set(); // job ids ticked for comparison
let jobsTimer = null, jobsPageToken = null, olderJobs = [], jobsLoading = null, shownJobs = [];

/** A spec value by dotted path ("a2c.learning_rate"), or undefined. */
function specValue(spec, path) {
  return path.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), spec);
}

function duration(job) {
  if (!job.started) return "—";
  const s = Math.max(0, ((job.ended ? Date.parse(job.ended) : Date.now()) - Date.parse(job.started)) / 1000);
  if (s < 60) return `${s.toFixed(0)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")} m`;
}

/** A config value for a table cell or label: fractions to 4 significant digits, lists joined. */
const fmtValue = v => v === undefined || v === null ? "—" : Array.isArray(v) ? v.join(", ") || "—"
  : typeof v === "number" && !Number.isInteger(v) ? String(+v.toPrecision(4)) : String(v);

/** The runs table's columns: fixed ones, then config columns the user picks (kept in localStorage). */
const FIXED_COLUMNS = [
  {id: "job", label: "Run"}, {id: "status", label: "Status"}, {id: "env", label: "Env"},
  {id: "progress", label: "Progress", className: "w-progress"}, {id: "ret", label: "Mean return", className: "num"},
  {id: "eval_final", label: "Eval final", className: "num"}, {id: "eval_best", label: "Eval best", className: "num"},
  {id: "duration", label: "Duration"}, {id: "started", label: "Started"},
];
const CONFIG_COLUMNS = [
  ["seed", "seed"], ["a2c.learning_rate", "lr"], ["a2c.steps_per_batch", "n_steps"], ["a2c.gamma", "gamma"],
  ["a2c.gae_lambda", "gae λ"], ["a2c.entropy_coef", "ent coef"], ["workers", "workers"],
  ["envs_per_worker", "envs/worker"], ["total_steps", "total steps"], ["mode", "mode"], ["tags", "tags"],
].map(([path, label]) => ({id: "cfg:" + path, path, label, className: path === "mode" || path === "tags" ? "" : "num"}));
const COLUMNS_KEY = "a2c-run-columns";
let configColumns = (() => {
  try { return JSON.parse(localStorage.getItem(COLUMNS_KEY)) || ["seed", "a2c.learning_rate"]; }
  catch { return ["seed", "a2c.learning_rate"]; }
})();

function visibleColumns() {
  return [{id: "select", label: ""}, ...FIXED_COLUMNS, ...CONFIG_COLUMNS.filter(c => configColumns.includes(c.path))];
}

function renderColumnPicker() {
  $("#column-picker").replaceChildren(...CONFIG_COLUMNS.map(c => {
    const box = el("input", {type: "checkbox", checked: configColumns.includes(c.path)});
    box.dataset.column = c.path;
    box.onchange = () => {
      configColumns = CONFIG_COLUMNS.map(x => x.path).filter(p => p === c.path ? box.checked : configColumns.includes(p));
      localStorage.setItem(COLUMNS_KEY, JSON.stringify(configColumns));
      renderJobs(shownJobs);
    };
    return el("label", {}, box, ` ${c.label} `, el("span", {className: "muted small", textContent: c.path}));
  }));
}

/** Reload the runs table (one load at a time: a slow server does not pile up requests). */
function refreshJobs() {
  if (!jobsLoading) jobsLoading = loadJobs().finally(() => { jobsLoading = null; });
  return jobsLoading;
}

async function loadJobs() {
  const page = await apiJson("/jobs?max_results=50");
  const shown = page.jobs.concat(olderJobs.filter(o => !page.jobs.some(j => j.id === o.id)));
  renderJobs(shown);
  if (!olderJobs.length) jobsPageToken = page.next_page_token;
  $("#jobs-more").hidden = !jobsPageToken;
  // Mean return and evaluation are in each job's detail: fetched for unfinished jobs, and once
  // for finished ones (at most 20 per refresh, so a long list fills in over a few refreshes).
  const need = shown.filter(j => !FINISHED.has(j.status) || !(details.has(j.id) && FINISHED.has(details.get(j.id).status)));
  await Promise.all(need.slice(0, 20).map(async j => {
    const d = await apiJson(`/jobs/${j.id}`).catch(() => null);
    if (!d) return;
    details.set(j.id, d);
    fillDetailCells(d);
  }));
}

function fillDetailCells(d) {
  const row = document.querySelector(`tr[data-job="${d.id}"]`);
  if (!row) return;
  const set = (cls, text) => { const c = row.querySelector("." + cls); if (c) c.textContent = text; };
  set("ret", num(d.latest_metrics ? d.latest_metrics.episode_return_mean : null));
  set("eval_final", num(d.evaluation ? d.evaluation.final : null));
  set("eval_best", num(d.evaluation ? d.evaluation.best : null));
}

function renderJobs(jobs) {
  shownJobs = jobs;
  const cols = visibleColumns();
  $("#jobs-table thead tr").replaceChildren(...cols.map(c => el("th", {className: c.className || "", textContent: c.label})));
  const body = $("#jobs-table tbody");
  body.replaceChildren(...jobs.map(j => {
    const p = j.progress, name = j.spec && typeof j.spec.name === "string" ? j.spec.name : "";
    const cell = {
      select: () => {
        const box = el("input", {type: "checkbox", checked: selected.has(j.id), title: "Select to compare"});
        box.dataset.select = j.id;
        box.onchange = () => { box.checked ? selected.add(j.id) : selected.delete(j.id); updateCompareButton(); };
        return el("td", {className: "select"}, box);
      },
      job: () => el("td", {className: "run"}, el("a", {href: `#/jobs/${j.id}`, className: "mono", textContent: j.id}),
                    name ? el("span", {className: "run-name", textContent: name}) : null),
      status: () => el("td", {}, badge(j.status), j.stop_requested && !FINISHED.has(j.status)
        ? el("span", {className: "muted small", textContent: " stopping"}) : null),
      env: () => el("td", {textContent: j.env}),
      progress: () => el("td", {title: `${steps(p.step)} / ${steps(p.total_steps)} steps`},
                         progressBar(p.fraction, `${Math.round(p.fraction * 100)}%`)),
      ret: () => el("td", {className: "num ret", textContent: "—"}),
      eval_final: () => el("td", {className: "num eval_final", textContent: "—"}),
      eval_best: () => el("td", {className: "num eval_best", textContent: "—"}),
      duration: () => el("td", {className: "duration", textContent: duration(j)}),
      started: () => el("td", {className: "muted started", textContent: when(j.started)}),
    };
    const tr = el("tr", {className: "clickable"}, ...cols.map(c => {
      const td = c.path ? el("td", {className: (c.className || "") + " cfg", textContent: fmtValue(specValue(j.spec, c.path))})
        : cell[c.id]();
      td.dataset.label = c.label;
      if (c.path) td.dataset.column = c.path;
      return td;
    }));
    tr.dataset.job = j.id;
    tr.onclick = ev => {
      if (ev.target.tagName !== "A" && ev.target.tagName !== "INPUT" && !ev.target.closest("td.select")) {
        location.hash = `#/jobs/${j.id}`;
      }
    };
    return tr;
  }));
  for (const j of jobs) if (details.has(j.id)) fillDetailCells(details.get(j.id));
  $("#jobs-empty").hidden = jobs.length > 0;
  $("#jobs-count").textContent = jobs.length ? `${jobs.length} shown` : "";
  updateCompareButton();
}

function updateCompareButton() {
  const button = $("#compare");
  button.disabled = selected.size < 1;
  button.textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
}

$("#compare").onclick = () => { location.hash = `#/compare/${[...selected].join(",")}`; };

$("#jobs-more").onclick = async () => {
  const page = await apiJson(`/jobs?max_results=50&page_token=${encodeURIComponent(jobsPageToken)}`);
  olderJobs = olderJobs.concat(page.jobs);
  jobsPageToken = page.next_page_token;
  await refreshJobs();
};

// ---------------------------------------------------------------- new-job form

function clearFormErrors() {
  for (const f of document.querySelectorAll("#job-form .field")) {
    f.classList.remove("invalid");
    f.querySelector(".error").textContent = "";
  }
  $("#form-error").hidden = true;
}

/** Put each 422 detail next to the field its `loc` names; the rest above the button. */
function showFormErrors(detail) {
  const general = [];
  for (const d of Array.isArray(detail) ? detail : [{loc: [], msg: String(detail)}]) {
    const path = (d.loc || []).slice(d.loc && d.loc[0] === "body" ? 1 : 0).join(".");
    const field = path && document.querySelector(`#job-form .field[data-field="${CSS.escape(path)}"]`);
    if (field) {
      field.classList.add("invalid");
      field.querySelector(".error").textContent = d.msg;
    } else {
      general.push(path ? `${path}: ${d.msg}` : d.msg);
    }
  }
  $("#form-error").textContent = general.join("\n");
  $("#form-error").hidden = !general.length;
  const first = document.querySelector("#job-form .field.invalid input, #job-form .field.invalid select");
  if (first) first.focus();
}

/** The job spec from the form: only the fields filled in, nested by their dotted names. */
function formSpec(form) {
  let spec = {};
  const extra = form.elements.extra.value.trim();
  if (extra) {
    try { spec = JSON.parse(extra); } catch (err) {
      throw {detail: [{loc: ["body", "extra"], msg: `not valid JSON: ${err.message}`}]};
    }
    if (!spec || typeof spec !== "object" || Array.isArray(spec)) {
      throw {detail: [{loc: ["body", "extra"], msg: "must be a JSON object of job spec fields"}]};
    }
  }
  for (const input of form.querySelectorAll("input[name], select[name]")) {
    const raw = input.value.trim();
    if (!raw) continue;
    // Numbers go as numbers; anything else as typed, for the server to name the field.
    const value = input.type === "number" || input.inputMode === "decimal"
      ? (isFinite(Number(raw)) ? Number(raw) : raw) : raw;
    const [head, tail] = input.name.split(".");
    if (tail) spec[head] = {...(spec[head] || {}), [tail]: value};
    else spec[head] = value;
  }
  return spec;
}

$("#job-form").onsubmit = async ev => {
  ev.preventDefault();
  clearFormErrors();
  const form = ev.target, button = $("#job-submit");
  let spec;
  try { spec = formSpec(form); } catch (err) { showFormErrors(err.detail); return; }
  button.disabled = true;
  try {
    const res = await api("/jobs", {method: "POST", body: JSON.stringify(spec),
                                     headers: {"Content-Type": "application/json"}});
    const body = await res.json().catch(() => null);
    if (res.status === 201) {
      location.hash = `#/jobs/${body.id}`;
    } else {
      showFormErrors(body && body.detail !== undefined ? body.detail : `${res.status} ${res.statusText}`);
    }
  } catch (err) {
    showFormErrors(String(err.message || err));
  } finally {
    button.disabled = false;
  }
};

// ---------------------------------------------------------------- job view

const RETURN_SERIES = [
  {band: ["episode_return_min", "episode_return_max"], label: "episode min–max", color: "#2563eb"},
  {key: "episode_return_mean", label: "episode mean (last 20)", color: "#2563eb"},
  {key: "eval_return_mean", label: "eval mean (deterministic)", color: "#dc2626", points: true}];
const SMALL_PANELS = [
  ["policy_loss", "Policy loss", "#7c3aed"], ["value_loss", "Value loss", "#ea580c"], ["entropy", "Entropy", "#059669"],
  ["explained_variance", "Explained variance", "#0d9488"], ["grad_norm", "Grad norm (before clipping)", "#b45309"],
  ["learning_rate", "Learning rate", "#4f46e5"], ["env_steps_per_s", "Env steps / s", "#0891b2"]];

const jobCharts = new ChartGroup($("#job-chart-toolbar"));
jobCharts.panel($("#chart-return"), {title: "Return", height: 320, series: RETURN_SERIES});
for (const [key, title, color] of SMALL_PANELS) {
  jobCharts.panel($(`#chart-${key}`), {title, height: 200, series: [{key, label: "", color}]});
}

let view = null;  // {id, abort, timer, job, lastStep, latest, lastEval, rows, video, videoUrl, videoLoading}

function closeJobView() {
  if (!view) return;
  view.abort.abort();
  clearTimeout(view.timer);
  showVideo(view, null, null);
  view = null;
}

function openJobView(id) {
  closeJobView();
  view = {id, abort: new AbortController(), timer: null, job: null, lastStep: 0, latest: null, lastEval: null, rows: []};
  jobCharts.setRuns([{id, label: id, rows: view.rows}]);
  jobCharts.setEmptyText("waiting for metrics…");
  $("#job-title").textContent = `Job ${id}`;
  $("#job-env").textContent = "";
  $("#job-events").replaceChildren();
  $("#job-config").replaceChildren();
  $("#ckpt-table tbody").replaceChildren();
  $("#job-error").hidden = true;
  $("#job-wait").hidden = true;
  followMetrics(view);
  pollJob(view);
}

let statsPending = false;
function scheduleStats() {
  if (statsPending) return;
  statsPending = true;
  requestAnimationFrame(() => { statsPending = false; renderStats(); });
}

/** Follow the metrics stream until its `end` event; reconnect from the last step if it drops. */
async function followMetrics(v) {
  const state = $("#stream-state");
  while (v === view) {
    let ended = false;
    state.textContent = "live";
    try {
      await readEvents(`/jobs/${v.id}/metrics/stream?since_step=${v.lastStep}`, ev => {
        if (ev.event === "metrics") {
          const row = JSON.parse(ev.data);
          v.lastStep = row.step; v.latest = row;
          if (typeof row.eval_return_mean === "number") v.lastEval = row.eval_return_mean;
          jobCharts.addRows(v.id, [row]);
          scheduleStats();
        } else if (ev.event === "end") {
          ended = true;
        }
      }, v.abort.signal);
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err.status === 404) { state.textContent = "no such job"; return; }
    }
    if (ended) {
      state.textContent = "job ended: all rows shown";
      jobCharts.setEmptyText("no metrics: the job ended before its first update");
      pollJob(v);
      return;
    }
    state.textContent = "reconnecting…";
    await new Promise(r => setTimeout(r, 2000));
  }
}

async function pollJob(v) {
  clearTimeout(v.timer);
  if (v !== view) return;
  try {
    const [job, ckpts, videos] = await Promise.all([apiJson(`/jobs/${v.id}`), apiJson(`/jobs/${v.id}/checkpoints`),
                                                    apiJson(`/jobs/${v.id}/videos`)]);
    if (v !== view) return;
    v.job = job;
    renderJob(job);
    renderCheckpoints(v.id, ckpts.checkpoints);
    loadNewestVideo(v, videos.videos).catch(() => {});
    if (FINISHED.has(job.status) && v.finalShown) return;
    v.finalShown = FINISHED.has(job.status);
  } catch (err) {
    if (err.status === 404) { $("#job-title").textContent = `No job ${v.id}`; return; }
  }
  v.timer = setTimeout(() => pollJob(v), POLL_MS);
}

/** Why a PENDING job waits, from the API's `queue`. */
function waitText(job) {
  const q = job.queue;
  if (job.status !== "PENDING" || !q) return "";
  if (q.starting) return "Starting: its workers and learner are being placed.";
  const cpus = q.cpus_needed === null || q.cpus_needed === undefined ? "" : `needs ${q.cpus_needed} CPUs`;
  const free = q.cpus_free === null || q.cpus_free === undefined ? ""
    : `; ${fmtNumber(q.cpus_free)} of ${fmtNumber(q.cpus_total)} free`;
  return `Queued: place ${q.place} of ${q.queued}` + (cpus ? ` — ${cpus}${free}.` : ".");
}

function renderJob(job) {
  $("#job-status").replaceWith(Object.assign(badge(job.status), {id: "job-status"}));
  const name = typeof job.spec.name === "string" && job.spec.name ? job.spec.name : "";
  $("#job-title").textContent = name ? `${name} (${job.id})` : `Job ${job.id}`;
  $("#job-env").textContent = `${job.env} · seed ${job.spec.seed} · ${job.spec.workers} worker${job.spec.workers === 1 ? "" : "s"} × `
    + `${job.spec.envs_per_worker} envs · ${job.spec.mode}`;
  jobCharts.setStart(job.id, job.started ? Date.parse(job.started) / 1000 : null);
  const stop = $("#job-stop");
  stop.disabled = FINISHED.has(job.status) || job.stop_requested;
  stop.textContent = job.stop_requested && !FINISHED.has(job.status) ? "Stopping…" : "Stop";
  const wait = waitText(job);
  $("#job-wait").textContent = wait;
  $("#job-wait").hidden = !wait;
  if (FINISHED.has(job.status)) jobCharts.setEmptyText("no metrics: the job ended before its first update");
  renderStats();
  renderConfig(job.spec);
  const error = $("#job-error");
  error.hidden = !job.error;
  if (job.error) error.textContent = `${job.error.type}: ${job.error.message}`;
  renderEvents(job.events || []);
}

/** Events newest first; a run of checkpoint events is one line that opens to list them. */
function renderEvents(events) {
  const items = [];
  const line = e => el("li", {}, el("span", {className: "muted mono", textContent: when(e.time).slice(11)}),
                       el("span", {className: "ev-kind", textContent: e.kind}), el("span", {textContent: e.message}));
  const list = events.slice().reverse();
  for (let i = 0; i < list.length;) {
    let j = i;
    while (j < list.length && list[j].kind === "checkpoint") j++;
    if (j - i > 1) {
      const group = list.slice(i, j);
      const summary = el("summary", {}, el("span", {className: "muted mono", textContent: when(group[0].time).slice(11)}),
        el("span", {className: "ev-kind", textContent: "checkpoint"}),
        el("span", {textContent: `${group.length} checkpoints, latest ${group[0].message}`}));
      const li = el("li", {className: "ev-group"}, el("details", {}, summary, el("ol", {}, ...group.map(line))));
      items.push(li);
      i = j;
    } else {
      items.push(line(list[i]));
      i += 1;
    }
  }
  // Keep a group the user opened open across polls.
  const open = new Set([...document.querySelectorAll("#job-events details[open] summary")].map(s => s.lastChild.textContent.split(",")[0]));
  $("#job-events").replaceChildren(...items);
  for (const d of document.querySelectorAll("#job-events details")) {
    if (open.size && open.has(d.querySelector("summary").lastChild.textContent.split(",")[0])) d.open = true;
  }
}

/** The job's effective spec, flattened; values the tuned table set are marked. */
function renderConfig(spec) {
  const tuned = new Set(Array.isArray(spec.tuned) ? spec.tuned : []);
  const rows = [];
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj)) {
      const path = prefix ? `${prefix}.${k}` : k;
      if (path === "tuned" || path === "env") continue;
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) walk(v, path);
      else rows.push([path, v]);
    }
  };
  walk(spec, "");
  const fmt = v => v === null ? "null" : Array.isArray(v) ? `[${v.join(", ")}]`
    : typeof v === "object" ? JSON.stringify(v) : String(v);
  $("#job-config").replaceChildren(...rows.map(([path, v]) => {
    const div = el("div", {className: tuned.has(path) ? "tuned" : ""},
      el("dt", {textContent: path}), el("dd", {className: "mono", textContent: fmt(v)},
        tuned.has(path) ? el("span", {className: "tag", textContent: "tuned", title: "From the tuned table for this env"}) : null));
    div.dataset.field = path;
    return div;
  }));
  $("#config-note").textContent = tuned.size ? `${tuned.size} values from the tuned table for ${spec.env}` : "";
}

/** The run's average env steps/s: steps trained over training time (the summary's once it ended). */
function averageSpeed(job, rows) {
  if (job && job.summary && typeof job.summary.env_steps_per_s === "number") return job.summary.env_steps_per_s;
  // Rows since the training loop last (re)started (wall_s counts from that start); the first of
  // them trained one batch from the segment's start step.
  let first = rows.length - 1;
  while (first > 0 && rows[first - 1].wall_s < rows[first].wall_s) first--;
  const a = rows[first], b = rows[rows.length - 1];
  const batch = job && job.spec.a2c ? job.spec.a2c.steps_per_batch : null;
  if (!a || !(b.wall_s > 0) || typeof batch !== "number") return null;
  return (b.step - (a.step - batch)) / b.wall_s;
}

/** The figures above the curves, from the streamed rows and the job record. */
function renderStats() {
  if (!view) return;
  const m = view.latest || (view.job && view.job.latest_metrics) || {}, job = view.job;
  if (!job) return;
  // The stream is ahead of the job record between polls.
  const step = Math.max(job.progress.step, m.step || 0), total = job.progress.total_steps;
  const fraction = Math.min(step / total, 1);
  $("#job-progress-fill").style.width = `${(fraction * 100).toFixed(1)}%`;
  $("#job-progress-text").textContent = `${steps(step)} / ${steps(total)} steps (${Math.round(fraction * 100)}%)`;
  const speed = averageSpeed(job, view.rows);
  const ev = job.evaluation;
  const stats = [
    ["Updates", steps(view.rows.length)],
    ["Mean return", num(m.episode_return_mean)],
    ["Eval return", num(view.lastEval !== null ? view.lastEval : ev && ev.final)],
    ["Best eval", num(ev ? Math.max(ev.best, view.lastEval ?? -Infinity) : view.lastEval)],
    ["Env steps/s (avg)", typeof speed === "number" ? steps(Math.round(speed)) : "—"],
    ["Duration", duration(job)],
    ["Started", when(job.started)],
    ["Ended", when(job.ended)],
  ];
  $("#job-stats").replaceChildren(...stats.map(([k, v]) => {
    const div = el("div", {}, el("dt", {textContent: k}), el("dd", {textContent: v}));
    div.dataset.stat = k;
    return div;
  }));
}

/** The job's checkpoints, newest first: each one's evaluation return (— when it was not
 * evaluated), the best-evaluated one marked (the `best` of the archive routes). */
function renderCheckpoints(jobId, ckpts) {
  $("#ckpt-empty").hidden = ckpts.length > 0;
  const labels = ["Checkpoint", "Step", "Eval return", "Size", "Created", ""];
  $("#ckpt-table tbody").replaceChildren(...ckpts.slice().reverse().map(c => {
    const button = el("button", {className: "ghost small", type: "button", textContent: "Download"});
    button.dataset.ckpt = c.id;
    button.onclick = () => download(c.archive_url, `${jobId}-${c.id}.tar.gz`).catch(err => alert(err.message));
    const cells = [
      el("td", {className: "mono", textContent: c.id},
         c.best ? el("span", {className: "best-mark", textContent: " ★ best"}) : null),
      el("td", {className: "num", textContent: steps(c.step)}),
      el("td", {className: "num", textContent: num(c.eval_return_mean)}), el("td", {className: "num", textContent: bytes(c.size_bytes)}),
      el("td", {className: "muted", textContent: when(c.created)}), el("td", {className: "num action"}, button)];
    cells.forEach((td, i) => { td.dataset.label = labels[i]; });
    return el("tr", {}, ...cells);
  }));
}

/** Show the newest of a job's videos beside the learning curve, once, when it is newer than the
 * one shown. The MP4 is fetched with the token and played from a blob URL (a <video src> could
 * not send the header, and the token must not go into a URL). */
async function loadNewestVideo(v, videos) {
  const newest = videos[videos.length - 1];
  if (!newest || v.videoLoading || (v.video && v.video.step >= newest.step)) return;
  v.videoLoading = true;
  try {
    const res = await api(newest.url, {signal: v.abort.signal});
    if (!res.ok) return;
    const blob = await res.blob();
    if (v === view) showVideo(v, newest, URL.createObjectURL(blob));
  } finally {
    v.videoLoading = false;
  }
}

/** Put `video` (with its blob URL) in the player, or empty it (null), freeing the old blob. */
function showVideo(v, video, url) {
  const player = $("#job-video-player"), figure = $("#job-video");
  if (v.videoUrl) URL.revokeObjectURL(v.videoUrl);
  v.video = video; v.videoUrl = url;
  figure.hidden = !video;
  $("#curve-video").classList.toggle("has-video", !!video);
  if (!video) {
    player.removeAttribute("src");
    player.load();
    delete figure.dataset.video;
    return;
  }
  figure.dataset.video = video.id;
  player.src = url;
  player.play().catch(() => {});  // muted: autoplay is allowed; the controls are there if not
  $("#job-video-caption").textContent = `step ${steps(video.step)} · return ${num(video.return)} · `
    + `${video.length} steps${video.complete ? "" : " (cut short)"}`;
}

$("#job-video-download").onclick = () => {
  if (!view || !view.video) return;
  const a = Object.assign(document.createElement("a"), {href: view.videoUrl, download: `${view.id}-${view.video.id}.mp4`});
  document.body.append(a); a.click(); a.remove();
};

$("#job-stop").onclick = async () => {
  if (!view) return;
  const v = view, button = $("#job-stop");
  const pending = v.job && v.job.status === "PENDING";
  if (!confirm(pending ? `Stop job ${v.id}? It has not started: it ends STOPPED at once.`
                       : `Stop job ${v.id}? It ends after its current update, with a final checkpoint.`)) return;
  button.disabled = true;
  const res = await api(`/jobs/${v.id}/stop`, {method: "POST"});
  if (res.status !== 202) {
    const body = await res.json().catch(() => null);
    $("#job-error").textContent = detailText(body) || res.statusText;
    $("#job-error").hidden = false;
  }
  pollJob(v);
};

$("#job-png").onclick = () => view && download(`/jobs/${view.id}/plot.png`, `${view.id}-learning-curve.png`)
  .catch(err => alert(err.message));

$("#token-change").onclick = () => { sessionStorage.removeItem(TOKEN_KEY); askToken("").then(route); };

// ---------------------------------------------------------------- compare view

const cmpCharts = new ChartGroup($("#compare-toolbar"));
cmpCharts.panel($("#cmp-return"), {title: "Episode return (mean of last 20)", height: 320,
                                   series: [{key: "episode_return_mean", label: "", color: "#2563eb"}]});
cmpCharts.panel($("#cmp-eval"), {title: "Eval return (deterministic)", height: 220,
                                 series: [{key: "eval_return_mean", label: "", color: "#dc2626", points: true}]});
for (const key of ["policy_loss", "value_loss", "entropy"]) {
  cmpCharts.panel($(`#cmp-${key}`), {title: SMALL_PANELS.find(p => p[0] === key)[1], height: 200,
                                     series: [{key, label: "", color: "#7c3aed"}]});
}
let compareIds = null;
window.a2cCharts = {job: jobCharts, compare: cmpCharts};  // for the browser tests and the console

/** Load every row of each run (pages of 1000) and overlay them; refreshes while any runs. */
async function openCompare(ids) {
  compareIds = ids.join(",");
  const token = compareIds;
  for (const id of ids) selected.add(id);
  const jobs = await Promise.all(ids.map(id => apiJson(`/jobs/${id}`).catch(() => null)));
  if (token !== compareIds) return;
  const runs = jobs.filter(Boolean).map((j, i) => ({
    id: j.id, label: (typeof j.spec.name === "string" && j.spec.name) || `${j.id} (seed ${j.spec.seed})`,
    color: RUN_COLORS[i % RUN_COLORS.length], t0: j.started ? Date.parse(j.started) / 1000 : null, rows: [], job: j}));
  cmpCharts.setRuns(runs);
  $("#compare-runs").replaceChildren(...runs.map(r => el("span", {className: "run-chip"},
    el("span", {className: "swatch", style: `background:${r.color}`}),
    el("a", {href: `#/jobs/${r.id}`, textContent: r.label}), " ", badge(r.job.status))));
  $("#compare-state").textContent = `${runs.length} runs`;
  const since = new Map(runs.map(r => [r.id, 0]));
  for (;;) {
    let active = false;
    for (const r of cmpCharts.runs) {
      for (;;) {
        const page = await apiJson(`/jobs/${r.id}/metrics?since_step=${since.get(r.id)}&limit=1000`).catch(() => null);
        if (token !== compareIds || !page) return;
        cmpCharts.addRows(r.id, page.rows);
        since.set(r.id, page.next_since_step);
        if (!FINISHED.has(page.status)) active = true;
        if (page.rows.length < 1000) break;
      }
    }
    if (!active) { cmpCharts.setEmptyText("no metrics"); return; }
    await new Promise(res => setTimeout(res, POLL_MS));
    if (token !== compareIds) return;
  }
}

// ---------------------------------------------------------------- sweeps

/** The sweeps card of the runs page (hidden while there are none). */
async function loadSweeps() {
  const page = await apiJson("/sweeps?max_results=20");
  $("#sweeps-card").hidden = page.sweeps.length === 0;
  $("#sweeps-count").textContent = page.sweeps.length ? `${page.sweeps.length} shown` : "";
  $("#sweeps-table tbody").replaceChildren(...page.sweeps.map(s => {
    const spec = s.spec, labels = ["Sweep", "Status", "Env", "Trials", "Metric", "Started"];
    const cells = [
      el("td", {}, el("a", {href: `#/sweeps/${s.id}`, className: "mono", textContent: s.id})),
      el("td", {}, badge(s.status)),
      el("td", {textContent: spec.base && spec.base.env || "—"}),
      el("td", {className: "num", textContent: String(spec.num_samples)}),
      el("td", {textContent: `${spec.metric} (${spec.mode})`}),
      el("td", {className: "muted", textContent: when(s.started || s.created)}),
    ];
    cells.forEach((td, i) => { td.dataset.label = labels[i]; });
    const tr = el("tr", {className: "clickable"}, ...cells);
    tr.dataset.sweep = s.id;
    tr.onclick = ev => { if (ev.target.tagName !== "A") location.hash = `#/sweeps/${s.id}`; };
    return tr;
  }));
}

const BEST_COLOR = "#dc2626", TRIAL_COLOR = "#94a3b8";
const sweepCharts = new ChartGroup($("#sweep-toolbar"));
window.a2cCharts.sweep = sweepCharts;
let sweepPanel = null, sweepId = null;

/** The sweep's metric panel: one curve per trial (grey), the best trial's drawn over them in red. */
function sweepPanelFor(metric) {
  const series = [{key: metric, label: "", color: BEST_COLOR, points: metric === "eval_return_mean"}];
  const title = `${metric} per trial (best in red)`;
  if (!sweepPanel) sweepPanel = sweepCharts.panel($("#sweep-chart"), {title, height: 340, series});
  sweepPanel.series = series;
  sweepPanel.title = title;
  return sweepPanel;
}

/** A trial's label: its values at the space's paths, short. */
function trialLabel(t) {
  const values = Object.entries(t.config).map(([k, v]) =>
    `${k.split(".").pop()}=${fmtValue(v)}`);
  return `${t.job_id} ${values.join(" ")}`;
}

function renderSweep(s) {
  const spec = s.spec, best = s.best_trial;
  $("#sweep-id").textContent = s.id;
  $("#sweep-status").replaceChildren(badge(s.status));
  $("#sweep-state").textContent = s.message || "";
  $("#sweep-summary").textContent = `${spec.base.env} · ${spec.num_samples} trials, ${spec.max_concurrent_trials} at a ` +
    `time · ${spec.metric} (${spec.mode}) · scheduler ${spec.scheduler} · search ${spec.search}`;
  const stop = $("#sweep-stop");
  stop.hidden = FINISHED.has(s.status) || s.stop_requested;
  const bestLine = $("#sweep-best");
  bestLine.hidden = !best;
  if (best) {
    const ckpt = best.checkpoint;
    bestLine.replaceChildren(el("span", {className: "swatch", style: `background:${BEST_COLOR}`}), " Best: ",
      el("a", {href: `#/jobs/${best.job_id}`, className: "mono", textContent: best.job_id}),
      ` ${spec.metric} ${num(best.best_metric, 2)} at step ${steps(best.best_step)}`,
      ckpt ? el("span", {className: "muted", textContent: ` · checkpoint ${ckpt.id}`}) : null);
  }
  const paths = Object.keys(spec.space);
  const head = ["Trial", "Status", ...paths, "Step", `Best ${spec.metric}`];
  $("#trials-table thead tr").replaceChildren(...head.map((h, i) =>
    el("th", {className: i >= 2 && i < 2 + paths.length || i >= head.length - 2 ? "num" : "", textContent: h})));
  $("#trials-count").textContent = `${s.trials.length} of ${spec.num_samples}` +
    (Object.keys(s.trial_errors).length ? ` · ${Object.keys(s.trial_errors).length} errored` : "");
  $("#trials-table tbody").replaceChildren(...s.trials.map(t => {
    const isBest = best && best.job_id === t.job_id;
    const cells = [
      el("td", {}, el("a", {href: `#/jobs/${t.job_id}`, className: "mono", textContent: t.job_id}),
         isBest ? el("span", {className: "best-mark", textContent: " ★ best"}) : null),
      el("td", {}, badge(t.status)),
      ...paths.map(p => el("td", {className: "num cfg", textContent: fmtValue(t.config[p])})),
      el("td", {className: "num", textContent: steps(t.step)}),
      el("td", {className: "num", textContent: num(t.best_metric, 2)}),
    ];
    cells.forEach((td, i) => { td.dataset.label = head[i]; });
    const tr = el("tr", {className: "clickable" + (isBest ? " best" : "")}, ...cells);
    tr.dataset.trial = t.job_id;
    tr.onclick = ev => { if (ev.target.tagName !== "A") location.hash = `#/jobs/${t.job_id}`; };
    return tr;
  }));
}

/** Follow a sweep: its state and trials every POLL_MS, and each trial's metrics rows (pages of
 * 1000) on the one chart, until the sweep and all its trials have ended. */
async function openSweep(id) {
  sweepId = id;
  sweepCharts.setRuns([]);
  sweepCharts.setEmptyText("waiting for metrics…");
  const since = new Map();
  let bestId = null;
  for (;;) {
    const s = await apiJson(`/sweeps/${id}`).catch(err => { $("#sweep-state").textContent = err.message; return null; });
    if (sweepId !== id || !s) return;
    sweepPanelFor(s.spec.metric);
    renderSweep(s);
    const best = s.best_trial ? s.best_trial.job_id : null;
    const known = new Set(sweepCharts.runs.map(r => r.id));
    if (best !== bestId || s.trials.some(t => !known.has(t.job_id))) {
      // Trials in order, the best last so that its curve is drawn over the others.
      const order = s.trials.filter(t => t.job_id !== best).concat(s.trials.filter(t => t.job_id === best));
      const rows = new Map(sweepCharts.runs.map(r => [r.id, r.rows]));
      sweepCharts.setRuns(order.map(t => ({
        id: t.job_id, label: (t.job_id === best ? "★ " : "") + trialLabel(t), rows: rows.get(t.job_id) || [],
        color: t.job_id === best ? BEST_COLOR : TRIAL_COLOR, width: t.job_id === best ? 3 : 1.25})));
      bestId = best;
    }
    let active = !FINISHED.has(s.status);
    for (const t of s.trials) {
      for (;;) {
        const page = await apiJson(`/jobs/${t.job_id}/metrics?since_step=${since.get(t.job_id) || 0}&limit=1000`)
          .catch(() => null);
        if (sweepId !== id) return;
        if (!page) break;
        sweepCharts.addRows(t.job_id, page.rows);
        since.set(t.job_id, page.next_since_step);
        if (!FINISHED.has(page.status)) active = true;
        if (page.rows.length < 1000) break;
      }
    }
    if (!active) { sweepCharts.setEmptyText("no metrics"); return; }
    await new Promise(res => setTimeout(res, POLL_MS));
    if (sweepId !== id) return;
  }
}

$("#sweep-stop").onclick = async () => {
  const id = sweepId, button = $("#sweep-stop");
  if (!id || !confirm(`Stop sweep ${id}? No new trials start; running trials stop with a final checkpoint.`)) return;
  button.disabled = true;
  try {
    const res = await api(`/sweeps/${id}/stop`, {method: "POST"});
    if (!res.ok && res.status !== 409) alert(detailText(await res.json().catch(() => ({}))) || res.statusText);
  } finally {
    button.disabled = false;
  }
};

// ---------------------------------------------------------------- routing

function route() {
  const m = /^#\/jobs\/([0-9a-f]{12})$/.exec(location.hash);
  const cmp = /^#\/compare\/([0-9a-f]{12}(?:,[0-9a-f]{12})*)$/.exec(location.hash);
  const sw = /^#\/sweeps\/([0-9a-f]{12})$/.exec(location.hash);
  clearInterval(jobsTimer);
  $("#jobs-view").hidden = !!(m || cmp || sw);
  $("#job-view").hidden = !m;
  $("#compare-view").hidden = !cmp;
  $("#sweep-view").hidden = !sw;
  const crumbs = $("#crumbs");
  if (!cmp) compareIds = null;
  if (!sw) sweepId = null;
  if (m) {
    crumbs.replaceChildren(el("span", {textContent: "/"}), el("a", {href: "#/", textContent: "runs"}),
                           el("span", {textContent: "/"}), el("span", {className: "mono", textContent: m[1]}));
    if (!view || view.id !== m[1]) openJobView(m[1]);
  } else if (cmp) {
    crumbs.replaceChildren(el("span", {textContent: "/"}), el("a", {href: "#/", textContent: "runs"}),
                           el("span", {textContent: "/"}), el("span", {textContent: "compare"}));
    closeJobView();
    openCompare(cmp[1].split(",")).catch(() => {});
  } else if (sw) {
    crumbs.replaceChildren(el("span", {textContent: "/"}), el("a", {href: "#/", textContent: "runs"}),
                           el("span", {textContent: "/"}), el("span", {textContent: "sweep"}),
                           el("span", {textContent: "/"}), el("span", {className: "mono", textContent: sw[1]}));
    closeJobView();
    if (sweepId !== sw[1]) openSweep(sw[1]).catch(() => {});
  } else {
    crumbs.replaceChildren(el("span", {textContent: "/"}), el("span", {textContent: "runs"}));
    closeJobView();
    const refresh = () => { refreshJobs().catch(() => {}); loadSweeps().catch(() => {}); };
    refresh();
    jobsTimer = setInterval(refresh, POLL_MS);
  }
}

renderColumnPicker();
$("#token-change").hidden = !sessionStorage.getItem(TOKEN_KEY);
window.addEventListener("hashchange", route);
route();
