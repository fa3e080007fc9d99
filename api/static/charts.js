// The dashboard's charts: panels of metrics curves drawn by uPlot (vendored in /static/vendor/,
// no CDN), for one run or several overlaid, sharing one toolbar:
//
//   const group = new ChartGroup(toolbarElement);
//   group.panel(element, {title: "Return", height: 300, series: [
//     {band: ["episode_return_min", "episode_return_max"], label: "min–max", color: "#2563eb"},
//     {key: "episode_return_mean", label: "mean", color: "#2563eb"},
//     {key: "eval_return_mean", label: "eval", color: "#dc2626", points: true}]});
//   group.setRuns([{id, label, color, t0, rows}]);   // t0: the run's start, epoch seconds
//                                                   // width: a run's line width (to highlight one)
//   group.addRows(id, rows);                          // metrics rows in step order; redraws soon
//
// The toolbar sets, for every panel at once: the x axis (env steps, seconds since the training
// loop started, or wall-clock time), TensorBoard's smoothing (a debiased exponential moving
// average; the raw curve stays faint behind), a log y scale, and exports the rows as CSV.
// Panels share the x range (the data's), the crosshair and the zoom (drag across a panel;
// double-click resets). Hovering shows every series' value at that x in a tooltip.
//
// Each panel's element carries data-points="<data points drawn>" (band and smoothed copies not
// counted) and data-x-max="<right end of the x axis>", which tests read.
"use strict";

(function () {
  const RUN_COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  /** A compact number: 12k, 1.5M, 0.0031, 42.5. */
  function fmt(v) {
    if (typeof v !== "number" || !isFinite(v)) return "—";
    const a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (a >= 1e4) return +(v / 1e3).toPrecision(3) + "k";
    if (a !== 0 && a < 1e-2) return v.toExponential(2);
    return String(+v.toPrecision(4));
  }

  /** TensorBoard's smoothing: an exponential moving average, debiased at the start (nulls kept). */
  function smooth(ys, weight) {
    if (!(weight > 0)) return ys;
    let last = 0, n = 0;
    return ys.map(y => {
      if (y === null || !isFinite(y)) return null;
      last = last * weight + (1 - weight) * y;
      n += 1;
      return last / (1 - Math.pow(weight, n));
    });
  }

  function alpha(color, a) {
    const n = parseInt(color.slice(1), 16);
    return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${a})`;
  }

  const X_MODES = {
    step: {label: "env steps", value: (row) => row.step},
    relative: {label: "seconds of training", value: (row) => typeof row.wall_s === "number" ? row.wall_s : null},
    wall: {label: "wall-clock time", value: (row, run) =>
      typeof row.wall_s === "number" && run.t0 ? run.t0 + row.wall_s : null},
  };

  /** One chart: its uPlot, rebuilt when the series change, given new data otherwise. */
  class Panel {
    constructor(group, el, options) {
      this.group = group;
      this.el = el;
      this.title = options.title || "";
      this.series = options.series;
      this.height = options.height || 220;
      this.plot = null;
      this.shape = "";
      this.hovered = false;
      this.tip = null;
      new ResizeObserver(() => this.resize()).observe(el);
    }

    width() { return Math.max(this.el.clientWidth, 120); }

    resize() {
      if (this.plot && Math.abs(this.plot.width - this.width()) > 1) {
        this.plot.setSize({width: this.width(), height: this.height});
      }
    }

    /** The uPlot series and data columns of this panel for the group's runs and options. */
    build() {
      const g = this.group, mode = X_MODES[g.x], many = g.runs.length > 1;
      const xs = new Set();
      const cols = [];  // {series options, values by x, counted}
      const bands = [];
      for (const run of g.runs) {
        const xOf = row => mode.value(row, run);
        const column = key => {
          const m = new Map();
          for (const row of run.rows) {
            const x = xOf(row), v = row[key];
            if (x === null || typeof v !== "number" || !isFinite(v)) continue;
            if (g.log && v <= 0) continue;
            m.set(x, v); xs.add(x);
          }
          return m;
        };
        for (const s of this.series) {
          if (s.band) {
            if (many) continue;  // one band per run would hide the overlaid curves
            const hi = cols.length + 1;
            cols.push({opts: {label: s.label + " (max)", stroke: "transparent", width: 0, points: {show: false}},
                       values: column(s.band[1]), band: true});
            cols.push({opts: {label: s.label + " (min)", stroke: "transparent", width: 0, points: {show: false}},
                       values: column(s.band[0]), band: true});
            bands.push({series: [hi, hi + 1], fill: alpha(s.color, 0.14)});
            continue;
          }
          const color = many ? run.color : s.color;
          const label = many ? (s.label ? `${run.label} · ${s.label}` : run.label) : (s.label || this.title);
          const values = column(s.key);
          const smoothed = g.smoothing > 0 && !s.points;
          if (smoothed) {
            cols.push({opts: {label: label + " (raw)", stroke: alpha(color, 0.25), width: 1, spanGaps: true,
                              points: {show: false}}, values, raw: true});
          }
          cols.push({
            opts: {label, stroke: color, width: (many && run.width) || (s.points ? 1.5 : 2), spanGaps: true,
                   dash: s.points && many ? [5, 4] : undefined,
                   points: s.points ? {show: true, size: 6, fill: color} : {show: values.size === 1}},
            values, smooth: smoothed, counted: true});
        }
      }
      const x = Array.from(xs).sort((a, b) => a - b);
      const data = [x];
      let counted = 0;
      for (const c of cols) {
        let ys = x.map(v => c.values.has(v) ? c.values.get(v) : null);
        if (c.counted) counted += c.values.size;
        if (c.smooth) ys = smooth(ys, g.smoothing);
        data.push(ys);
      }
      return {x, data, cols, bands, counted};
    }

    draw() {
      const g = this.group, built = this.build();
      const shape = JSON.stringify([g.x, g.log, g.smoothing > 0, built.cols.map(c => [c.opts.label, c.opts.stroke, c.opts.width, c.opts.points.show])]);
      if (!this.plot || shape !== this.shape) {
        if (this.plot) this.plot.destroy();
        this.quiet = new Set(built.cols.flatMap((c, i) => c.raw || c.band ? [i + 1] : []));
        this.plot = new uPlot(this.options(built), built.data, this.el);
        this.shape = shape;
      } else {
        this.plot.setData(built.data, false);
        this.plot.setScale("x", {min: null, max: null});  // through the range function
        this.plot.redraw(true, true);
      }
      this.hasData = built.x.length > 0;
      this.noteRange(this.plot);
      this.el.dataset.points = String(built.counted);
      this.el.classList.toggle("no-data", !built.x.length);
      this.el.dataset.empty = g.emptyText;
    }

    options(built) {
      const g = this.group, time = g.x === "wall";
      return {
        width: this.width(), height: this.height, title: this.title,
        scales: {
          x: {time, range: (u, min, max) => g.xRange(min, max)},
          y: g.log ? {distr: 3} : {},
        },
        axes: [
          {stroke: "#64748b", grid: {stroke: "#eef2f7"}, ticks: {stroke: "#e2e8f0"}, size: 36,
           values: time ? undefined : (u, vals) => vals.map(fmt), label: undefined},
          {stroke: "#64748b", grid: {stroke: "#eef2f7"}, ticks: {stroke: "#e2e8f0"},
           size: (u, values) => 18 + 7 * Math.max(3, ...(values || []).map(v => String(v).length)),
           values: (u, vals) => vals.map(fmt)},
        ],
        series: [{label: X_MODES[g.x].label, value: (u, v) => v === null || v === undefined ? "—" : g.fmtX(v)},
                 ...built.cols.map(c => ({...c.opts, value: (u, v) => fmt(v)}))],
        bands: built.bands,
        legend: {show: true, live: false},
        cursor: {
          sync: {key: g.syncKey, setSeries: false, scales: ["x", null]},
          drag: {x: true, y: false, setScale: false},
          points: {size: 7},
        },
        hooks: {
          setSelect: [u => {
            if (u.select.width > 4) {
              g.zoom([u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x")]);
            }
            u.setSelect({left: 0, top: 0, width: 0, height: 0}, false);
          }],
          setCursor: [u => this.tooltip(u)],
          setScale: [(u, key) => { if (key === "x") this.noteRange(u); }],
          ready: [u => {
            u.over.addEventListener("mouseenter", () => { this.hovered = true; });
            u.over.addEventListener("mouseleave", () => { this.hovered = false; this.tooltip(u); });
            u.over.addEventListener("dblclick", () => g.zoom(null));
            // Hide the faint raw copies and band edges from the legend (still drawn).
            const entries = u.root.querySelectorAll(".u-legend .u-series");
            const offset = entries.length - built.cols.length;  // the x series' entry, when shown
            built.cols.forEach((c, i) => {
              if (c.raw || c.band) entries[i + offset]?.classList.add("u-hidden");
            });
          }],
        },
      };
    }

    /** data-x-max: the right end of the x axis (uPlot sets scales after a build, in a microtask). */
    noteRange(u) {
      this.el.dataset.xMax = this.hasData && u.scales.x.max !== undefined ? String(u.scales.x.max) : "";
    }

    /** The hover tooltip: x and each drawn series' value at the cursor (in the hovered panel). */
    tooltip(u) {
      const idx = u.cursor.idx;
      if (!this.hovered || idx === null || idx === undefined) {
        if (this.tip) this.tip.hidden = true;
        return;
      }
      if (!this.tip || this.tip.parentNode !== u.over) {
        this.tip = document.createElement("div");
        this.tip.className = "chart-tip";
        u.over.append(this.tip);
      }
      const lines = [`<b>${this.group.fmtX(u.data[0][idx])}</b>`];
      u.series.forEach((s, i) => {
        if (i === 0 || !s.show || this.quiet.has(i)) return;  // band edges and raw copies
        const v = nearest(u.data[i], idx);
        const color = typeof s.stroke === "function" ? s.stroke(u, i) : s.stroke;
        lines.push(`<span style="color:${color}">●</span> ${escapeHtml(s.label)}: <b>${fmt(v)}</b>`);
      });
      this.tip.innerHTML = lines.join("<br>");
      this.tip.hidden = false;
      const left = u.cursor.left, top = u.cursor.top, w = u.over.clientWidth;
      this.tip.style.left = (left > w / 2 ? left - this.tip.offsetWidth - 12 : left + 12) + "px";
      this.tip.style.top = Math.max(0, top - 10) + "px";
    }
  }

  /** The value at idx, or the closest non-null one before it (a series sampled less often, like eval). */
  function nearest(ys, idx) {
    for (let i = idx; i >= 0; i--) if (ys[i] !== null && ys[i] !== undefined) return ys[i];
    return null;
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  }

  let groups = 0;

  /** Panels that share runs, x axis, smoothing, log scale, zoom and crosshair; and their toolbar. */
  class ChartGroup {
    constructor(toolbar) {
      this.panels = [];
      this.runs = [];
      this.x = "step";
      this.smoothing = 0;
      this.log = false;
      this.zoomed = null;
      this.emptyText = "waiting for metrics…";
      this.syncKey = "a2c-" + (++groups);
      this.pending = false;
      if (toolbar) this.toolbar(toolbar);
    }

    panel(el, options) {
      const p = new Panel(this, el, options);
      this.panels.push(p);
      this.schedule();
      return p;
    }

    /** Show these runs: [{id, label, color?, width?, t0 (epoch s), rows}] (the rows arrays are kept). */
    setRuns(runs) {
      this.runs = runs.map((r, i) => ({rows: [], ...r, color: r.color || RUN_COLORS[i % RUN_COLORS.length]}));
      this.zoomed = null;
      this.schedule();
    }

    run(id) { return this.runs.find(r => r.id === id); }

    /** Append metrics rows to a run and redraw soon. */
    addRows(id, rows) {
      const run = this.run(id);
      if (!run) return;
      for (const r of rows) run.rows.push(r);
      this.schedule();
    }

    /** Set the start time (epoch seconds) of a run, for the wall-clock x axis. */
    setStart(id, t0) {
      const run = this.run(id);
      if (run && run.t0 !== t0) { run.t0 = t0; if (this.x === "wall") this.schedule(); }
    }

    /** What an empty panel says ("waiting for metrics…" or, once the runs ended, "no metrics"). */
    setEmptyText(text) { if (text !== this.emptyText) { this.emptyText = text; this.schedule(); } }

    clear() { this.setRuns([]); }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }

    draw() {
      this.extent = this.dataExtent();
      for (const p of this.panels) p.draw();
    }

    /** [min, max] of x over every panel's data, so the panels line up. */
    dataExtent() {
      let lo = Infinity, hi = -Infinity;
      const mode = X_MODES[this.x];
      for (const run of this.runs) for (const row of run.rows) {
        const x = mode.value(row, run);
        if (x === null) continue;
        if (x < lo) lo = x;
        if (x > hi) hi = x;
      }
      return lo <= hi ? [lo, hi] : null;
    }

    /** The x range every panel shows: the zoom, else the data's (never beyond it). */
    xRange(min, max) {
      const r = this.zoomed || this.extent || [min, max];
      return r[0] === r[1] ? [r[0] - 1, r[1] + 1] : [r[0], r[1]];
    }

    zoom(range) {
      this.zoomed = range;
      for (const p of this.panels) if (p.plot) p.plot.setScale("x", {min: null, max: null});
      this.draw();
    }

    fmtX(v) {
      if (this.x === "wall") {
        const d = new Date(v * 1000), pad = n => String(n).padStart(2, "0");
        return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
      }
      if (this.x === "relative") return fmt(v) + " s";
      return fmt(v) + " steps";
    }

    /** The rows of every run as CSV: run, then every key any row has. */
    csv() {
      const keys = ["step", "wall_s"];
      for (const run of this.runs) for (const row of run.rows) {
        for (const k of Object.keys(row)) if (!keys.includes(k)) keys.push(k);
      }
      const cell = v => v === null || v === undefined ? "" : (typeof v === "string" && /[",\n]/.test(v)
        ? `"${v.replace(/"/g, '""')}"` : String(v));
      const lines = [["run", ...keys].join(",")];
      for (const run of this.runs) for (const row of run.rows) lines.push([run.id, ...keys.map(k => row[k])].map(cell).join(","));
      return lines.join("\n") + "\n";
    }

    downloadCsv() {
      const name = (this.runs.length === 1 ? this.runs[0].id : "runs") + "-metrics.csv";
      const url = URL.createObjectURL(new Blob([this.csv()], {type: "text/csv"}));
      const a = Object.assign(document.createElement("a"), {href: url, download: name});
      document.body.append(a); a.click(); a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    }

    /** Fill `el` with the controls: x axis, smoothing, log scale, reset zoom, CSV. */
    toolbar(el) {
      el.classList.add("chart-toolbar");
      el.innerHTML = `
        <label>x axis <select data-ctl="x">
          <option value="step">env steps</option><option value="relative">relative (s)</option>
          <option value="wall">wall time</option></select></label>
        <label>smoothing <input data-ctl="smoothing" type="range" min="0" max="0.99" step="0.01" value="0">
          <output data-ctl="smoothing-value">0</output></label>
        <label><input data-ctl="log" type="checkbox"> log y</label>
        <button type="button" class="ghost small" data-ctl="reset" title="Or double-click a chart">Reset zoom</button>
        <button type="button" class="ghost small" data-ctl="csv">CSV</button>`;
      const ctl = name => el.querySelector(`[data-ctl="${name}"]`);
      ctl("x").onchange = ev => { this.x = ev.target.value; this.zoomed = null; this.schedule(); };
      ctl("smoothing").oninput = ev => {
        this.smoothing = Number(ev.target.value);
        ctl("smoothing-value").textContent = this.smoothing.toFixed(2);
        this.schedule();
      };
      ctl("log").onchange = ev => { this.log = ev.target.checked; this.schedule(); };
      ctl("reset").onclick = () => this.zoom(null);
      ctl("csv").onclick = () => this.downloadCsv();
    }
  }

  window.ChartGroup = ChartGroup;
  window.fmtNumber = fmt;
  window.RUN_COLORS = RUN_COLORS;
})();
