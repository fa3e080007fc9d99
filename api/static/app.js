// The a2c-service dashboard: jobs table, new-job form, and a job view whose learning curves
// follow GET /jobs/{id}/metrics/stream live.
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

// ---------------------------------------------------------------- jobs view

const returns = new Map();  // job id -> latest mean return; final once the job has finished
let jobsTimer = null, jobsPageToken = null, olderJobs = [], jobsLoading = null;

/** Reload the jobs table (one load at a time: a slow server does not pile up requests). */
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
  // Mean return is in each job's detail: fetch it for running jobs, and once for finished ones
  // (at most 20 per refresh, so a long list fills in over a few refreshes).
  const need = shown.filter(j => !FINISHED.has(j.status) || !returns.has(j.id));
  await Promise.all(need.slice(0, 20).map(async j => {
    const d = await apiJson(`/jobs/${j.id}`).catch(() => null);
    if (!d) return;
    const ret = d.latest_metrics ? d.latest_metrics.episode_return_mean : null;
    if (FINISHED.has(d.status) || ret !== null) returns.set(j.id, ret);
    const cell = document.querySelector(`tr[data-job="${j.id}"] .ret`);
    if (cell) cell.textContent = num(ret);
  }));
}

function renderJobs(jobs) {
  const body = $("#jobs-table tbody");
  body.replaceChildren(...jobs.map(j => {
    const p = j.progress;
    const tr = el("tr", {className: "clickable"},
      el("td", {}, el("a", {href: `#/jobs/${j.id}`, className: "mono", textContent: j.id})),
      el("td", {}, badge(j.status), j.stop_requested && !FINISHED.has(j.status)
        ? el("span", {className: "muted small", textContent: " stopping"}) : null),
      el("td", {textContent: j.env}),
      el("td", {title: `${steps(p.step)} / ${steps(p.total_steps)} steps`},
         progressBar(p.fraction, `${Math.round(p.fraction * 100)}%`)),
      el("td", {className: "num ret", textContent: num(returns.get(j.id))}),
      el("td", {className: "muted", textContent: when(j.started)}));
    tr.dataset.job = j.id;
    tr.onclick = ev => { if (ev.target.tagName !== "A") location.hash = `#/jobs/${j.id}`; };
    return tr;
  }));
  $("#jobs-empty").hidden = jobs.length > 0;
  $("#jobs-count").textContent = jobs.length ? `${jobs.length} shown` : "";
}

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

const charts = {
  return: new LineChart($("#chart-return"), {title: "Return", series: [
    {band: ["episode_return_min", "episode_return_max"], label: "episode min–max", color: "#2563eb"},
    {key: "episode_return_mean", label: "episode mean (last 20)", color: "#2563eb"},
    {key: "eval_return_mean", label: "eval mean (deterministic)", color: "#dc2626", points: true}]}),
  policy_loss: new LineChart($("#chart-policy_loss"), {title: "Policy loss",
    series: [{key: "policy_loss", label: "", color: "#7c3aed"}]}),
  value_loss: new LineChart($("#chart-value_loss"), {title: "Value loss",
    series: [{key: "value_loss", label: "", color: "#ea580c"}]}),
  entropy: new LineChart($("#chart-entropy"), {title: "Entropy",
    series: [{key: "entropy", label: "", color: "#059669"}]}),
  env_steps_per_s: new LineChart($("#chart-env_steps_per_s"), {title: "Env steps / s",
    series: [{key: "env_steps_per_s", label: "", color: "#0891b2"}]}),
};

let view = null;  // {id, abort, timer, job, lastStep, latest}

function closeJobView() {
  if (!view) return;
  view.abort.abort();
  clearTimeout(view.timer);
  view = null;
}

function openJobView(id) {
  closeJobView();
  view = {id, abort: new AbortController(), timer: null, job: null, lastStep: 0, latest: null, lastEval: null};
  Object.values(charts).forEach(c => c.clear());
  $("#job-title").textContent = `Job ${id}`;
  $("#job-events").replaceChildren();
  $("#ckpt-table tbody").replaceChildren();
  $("#job-error").hidden = true;
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
          Object.values(charts).forEach(c => c.add([row]));
          scheduleStats();
        } else if (ev.event === "end") {
          ended = true;
        }
      }, v.abort.signal);
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err.status === 404) { state.textContent = "no such job"; return; }
    }
    if (ended) { state.textContent = "job ended: all rows shown"; pollJob(v); return; }
    state.textContent = "reconnecting…";
    await new Promise(r => setTimeout(r, 2000));
  }
}

async function pollJob(v) {
  clearTimeout(v.timer);
  if (v !== view) return;
  try {
    const [job, ckpts] = await Promise.all([apiJson(`/jobs/${v.id}`), apiJson(`/jobs/${v.id}/checkpoints`)]);
    if (v !== view) return;
    v.job = job;
    renderJob(job);
    renderCheckpoints(v.id, ckpts.checkpoints);
    if (FINISHED.has(job.status) && v.finalShown) return;
    v.finalShown = FINISHED.has(job.status);
  } catch (err) {
    if (err.status === 404) { $("#job-title").textContent = `No job ${v.id}`; return; }
  }
  v.timer = setTimeout(() => pollJob(v), POLL_MS);
}

function renderJob(job) {
  $("#job-status").replaceWith(Object.assign(badge(job.status), {id: "job-status"}));
  $("#job-env").textContent = `${job.env} · ${job.spec.workers} workers × ${job.spec.envs_per_worker} envs · ${job.spec.mode}`;
  const stop = $("#job-stop");
  stop.disabled = FINISHED.has(job.status) || job.stop_requested;
  stop.textContent = job.stop_requested && !FINISHED.has(job.status) ? "Stopping…" : "Stop";
  renderStats();
  const error = $("#job-error");
  error.hidden = !job.error;
  if (job.error) error.textContent = `${job.error.type}: ${job.error.message}`;
  $("#job-events").replaceChildren(...(job.events || []).slice().reverse().map(e =>
    el("li", {}, el("span", {className: "muted mono", textContent: when(e.time).slice(11)}),
       el("span", {className: "ev-kind", textContent: e.kind}), el("span", {textContent: e.message}))));
}

/** The figures above the curves, from the latest streamed row and the job record. */
function renderStats() {
  if (!view) return;
  const m = view.latest || (view.job && view.job.latest_metrics) || {}, job = view.job;
  if (!job) return;
  // The stream is ahead of the job record between polls.
  const step = Math.max(job.progress.step, m.step || 0), total = job.progress.total_steps;
  const fraction = Math.min(step / total, 1);
  $("#job-progress-fill").style.width = `${(fraction * 100).toFixed(1)}%`;
  $("#job-progress-text").textContent = `${steps(step)} / ${steps(total)} steps (${Math.round(fraction * 100)}%)`;
  const stats = [
    ["Updates", steps(charts.return.rows.length)],
    ["Mean return", num(m.episode_return_mean)],
    ["Eval return", num(view.lastEval)],
    ["Env steps/s", typeof m.env_steps_per_s === "number" ? steps(Math.round(m.env_steps_per_s)) : "—"],
    ["Started", when(job.started)],
    ["Ended", when(job.ended)],
  ];
  $("#job-stats").replaceChildren(...stats.flatMap(([k, v]) => [el("dt", {textContent: k}), el("dd", {textContent: v})]));
}

function renderCheckpoints(jobId, ckpts) {
  $("#ckpt-empty").hidden = ckpts.length > 0;
  $("#ckpt-table tbody").replaceChildren(...ckpts.slice().reverse().map(c => {
    const button = el("button", {className: "ghost small", type: "button", textContent: "Download"});
    button.dataset.ckpt = c.id;
    button.onclick = () => download(c.archive_url, `${jobId}-${c.id}.tar.gz`).catch(err => alert(err.message));
    return el("tr", {},
      el("td", {className: "mono", textContent: c.id}), el("td", {className: "num", textContent: steps(c.step)}),
      el("td", {className: "num", textContent: num(c.return_mean)}), el("td", {className: "num", textContent: bytes(c.size_bytes)}),
      el("td", {className: "muted", textContent: when(c.created)}), el("td", {className: "num"}, button));
  }));
}

$("#job-stop").onclick = async () => {
  if (!view) return;
  const v = view, button = $("#job-stop");
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

// ---------------------------------------------------------------- routing

function route() {
  const m = /^#\/jobs\/([0-9a-f]{12})$/.exec(location.hash);
  clearInterval(jobsTimer);
  $("#jobs-view").hidden = !!m;
  $("#job-view").hidden = !m;
  const crumbs = $("#crumbs");
  if (m) {
    crumbs.replaceChildren(el("span", {textContent: "/"}), el("a", {href: "#/", textContent: "jobs"}),
                           el("span", {textContent: "/"}), el("span", {className: "mono", textContent: m[1]}));
    if (!view || view.id !== m[1]) openJobView(m[1]);
  } else {
    crumbs.replaceChildren(el("span", {textContent: "/"}), el("span", {textContent: "jobs"}));
    closeJobView();
    refreshJobs().catch(() => {});
    jobsTimer = setInterval(() => refreshJobs().catch(() => {}), POLL_MS);
  }
}

$("#token-change").hidden = !sessionStorage.getItem(TOKEN_KEY);
window.addEventListener("hashchange", route);
route();
