// A small line chart on <canvas>, for the dashboard's learning curves (no library, no CDN).
//
//   const chart = new LineChart(canvas, {title: "Return", series: [
//     {key: "episode_return_mean", label: "mean", color: "#2563eb"},
//     {band: ["episode_return_min", "episode_return_max"], label: "min–max", color: "#2563eb"},
//     {key: "eval_return_mean", label: "eval", color: "#dc2626", points: true}]});
//   chart.add(rows);   // metrics rows, each with `step`; redraws on the next animation frame
//
// After each draw the canvas carries data-points="<points drawn>", which tests read.
"use strict";

(function () {
  const FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  const PAD = {left: 56, right: 14, top: 30, bottom: 30};

  /** About `count` round tick values covering [lo, hi]. */
  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) { const d = Math.abs(lo) || 1; lo -= d / 2; hi += d / 2; }
    const raw = (hi - lo) / Math.max(count, 1);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || 10 * mag;
    lo = Math.floor(lo / step) * step; hi = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let v = lo; v <= hi + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
    return {ticks, lo, hi};
  }

  /** A compact number: 12k, 1.5M, 0.0031, 42.5. */
  function fmt(v) {
    const a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toPrecision(3) + "M";
    if (a >= 1e4) return +(v / 1e3).toPrecision(3) + "k";
    if (a !== 0 && a < 1e-2) return v.toExponential(1);
    return String(+v.toPrecision(4));
  }

  class LineChart {
    constructor(canvas, options) {
      this.canvas = canvas;
      this.title = options.title || "";
      this.series = options.series;
      this.rows = [];
      this.pending = false;
      new ResizeObserver(() => this.schedule()).observe(canvas);
    }

    /** Append metrics rows (in step order) and redraw soon. */
    add(rows) {
      for (const r of rows) this.rows.push(r);
      this.schedule();
    }

    /** Forget all rows. */
    clear() { this.rows = []; this.schedule(); }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }

    /** [[x, y]...] of one value key, skipping rows without it. */
    points(key) {
      const out = [];
      for (const r of this.rows) {
        const v = r[key];
        if (typeof v === "number" && isFinite(v)) out.push([r.step, v]);
      }
      return out;
    }

    draw() {
      const c = this.canvas, dpr = window.devicePixelRatio || 1;
      const w = c.clientWidth, h = c.clientHeight;
      if (!w || !h) return;
      if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
        c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
      }
      const g = c.getContext("2d");
      g.setTransform(dpr, 0, 0, dpr, 0, 0);
      g.clearRect(0, 0, w, h);
      g.font = FONT;

      const data = this.series.map(s => s.band
        ? {s, lo: this.points(s.band[0]), hi: this.points(s.band[1])}
        : {s, pts: this.points(s.key)});
      const xs = [], ys = [];
      for (const d of data) for (const arr of d.s.band ? [d.lo, d.hi] : [d.pts]) {
        for (const [x, y] of arr) { xs.push(x); ys.push(y); }
      }
      this.drawLegend(g, w);
      if (!xs.length) {
        g.fillStyle = "#94a3b8"; g.textAlign = "center"; g.textBaseline = "middle";
        g.fillText("waiting for metrics…", w / 2, h / 2);
        c.dataset.points = "0";
        return;
      }
      const xr = niceTicks(Math.min(0, ...xs), Math.max(...xs), Math.max(2, Math.floor((w - 80) / 90)));
      const yr = niceTicks(Math.min(...ys), Math.max(...ys), Math.max(2, Math.floor((h - 70) / 40)));
      const X = x => PAD.left + (x - xr.lo) / (xr.hi - xr.lo) * (w - PAD.left - PAD.right);
      const Y = y => h - PAD.bottom - (y - yr.lo) / (yr.hi - yr.lo) * (h - PAD.top - PAD.bottom);

      // Grid and axis labels.
      g.strokeStyle = "#e2e8f0"; g.lineWidth = 1; g.fillStyle = "#64748b";
      g.textAlign = "right"; g.textBaseline = "middle";
      for (const t of yr.ticks) {
        const y = Math.round(Y(t)) + 0.5;
        g.beginPath(); g.moveTo(PAD.left, y); g.lineTo(w - PAD.right, y); g.stroke();
        g.fillText(fmt(t), PAD.left - 6, y);
      }
      g.textAlign = "center"; g.textBaseline = "top";
      for (const t of xr.ticks) {
        const x = Math.round(X(t)) + 0.5;
        g.beginPath(); g.moveTo(x, PAD.top); g.lineTo(x, h - PAD.bottom); g.stroke();
        g.fillText(fmt(t), x, h - PAD.bottom + 6);
      }
      g.strokeStyle = "#94a3b8";
      g.beginPath(); g.moveTo(PAD.left + 0.5, PAD.top); g.lineTo(PAD.left + 0.5, h - PAD.bottom + 0.5);
      g.lineTo(w - PAD.right, h - PAD.bottom + 0.5); g.stroke();

      // Bands first, then lines, then points on top.
      let drawn = 0;
      g.save();
      g.beginPath(); g.rect(PAD.left, PAD.top - 4, w - PAD.left - PAD.right, h - PAD.top - PAD.bottom + 8); g.clip();
      for (const d of data.filter(d => d.s.band)) {
        const hiByStep = new Map(d.hi.map(([x, y]) => [x, y]));
        const pairs = d.lo.filter(([x]) => hiByStep.has(x));
        if (pairs.length < 2) continue;
        g.fillStyle = d.s.color; g.globalAlpha = 0.14;
        g.beginPath();
        pairs.forEach(([x, y], i) => i ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y)));
        for (let i = pairs.length - 1; i >= 0; i--) g.lineTo(X(pairs[i][0]), Y(hiByStep.get(pairs[i][0])));
        g.closePath(); g.fill(); g.globalAlpha = 1;
      }
      for (const d of data.filter(d => !d.s.band)) {
        g.strokeStyle = d.s.color; g.fillStyle = d.s.color; g.lineWidth = d.s.points ? 1.5 : 2;
        g.lineJoin = "round";
        if (d.pts.length > 1) {
          g.beginPath();
          d.pts.forEach(([x, y], i) => i ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y)));
          g.stroke();
        }
        if (d.s.points || d.pts.length === 1) {
          for (const [x, y] of d.pts) { g.beginPath(); g.arc(X(x), Y(y), 3, 0, 2 * Math.PI); g.fill(); }
        }
        drawn += d.pts.length;
      }
      g.restore();
      c.dataset.points = String(drawn);
    }

    drawLegend(g, w) {
      g.textBaseline = "middle"; g.textAlign = "left";
      g.fillStyle = "#0f172a"; g.font = "600 " + FONT;
      g.fillText(this.title, PAD.left - 48, 13);
      let x = PAD.left - 48 + g.measureText(this.title).width + 18;
      g.font = FONT;
      for (const s of this.series.filter(s => s.label)) {
        if (x > w - 60) break;
        g.fillStyle = s.color; g.globalAlpha = s.band ? 0.3 : 1;
        if (s.points) { g.beginPath(); g.arc(x + 6, 13, 3.5, 0, 2 * Math.PI); g.fill(); }
        else g.fillRect(x, s.band ? 8 : 11.5, 14, s.band ? 10 : 3);
        g.globalAlpha = 1; g.fillStyle = "#475569";
        g.fillText(s.label, x + 19, 13);
        x += 19 + g.measureText(s.label).width + 16;
      }
    }
  }

  window.LineChart = LineChart;
  window.fmtNumber = fmt;
})();
