// A line chart on a canvas: one line per series (the bucket means), the first series' min–max
// band behind it so a spike inside a wide bucket still shows, a red marker over every bucket
// holding a NaN or an infinity, dashed rules at alerts, a triangle on the time axis at every
// applied operator command, and a readout under the cursor. After a rewind, the stretches of
// history the run abandoned are drawn faded and dashed behind the live lines, with a thin
// rule marked "rewind" at each fork step.

import { fit, logTicks, metric, short, theme, ticks } from "./keel.js";

const M = { l: 54, r: 12, t: 10, b: 22 };

export class LineChart {
  constructor(figure) {
    this.fig = figure;
    this.canvas = figure.querySelector("canvas");
    this.readout = figure.querySelector("[data-readout]");
    this.legend = figure.querySelector("[data-legend]");
    this.series = new Map();
    this.log = false;
    this.toX = (s) => s;
    this.xName = "step";
    this.alerts = [];
    this.incidents = [];
    // Applied commands: {step, label}.
    this.commands = [];
    // Abandoned stretches: {key, branch, step, min, max, mean}, drawn in the colour of `key`.
    this.abandoned = [];
    // Fork steps of the rewinds that led to the live branch.
    this.rewinds = [];
    this.hover = null;
    const logButton = figure.querySelector("[data-log]");
    logButton?.addEventListener("click", () => {
      this.log = !this.log;
      logButton.setAttribute("aria-pressed", String(this.log));
      this.draw();
    });
    this.canvas.addEventListener("mousemove", (e) => {
      const r = this.canvas.getBoundingClientRect();
      this.hover = e.clientX - r.left;
      this.draw();
    });
    this.canvas.addEventListener("mouseleave", () => {
      this.hover = null;
      this.draw();
    });
  }

  // How many points to ask for: one per pixel of the plot.
  width() {
    return Math.max(50, Math.floor(this.canvas.clientWidth) - M.l - M.r);
  }

  // Replaces a series with a query answer (values already decoded to numbers). `s.x`, when
  // given, holds the series' own x value of each bucket (a run's tokens at that step, say),
  // in place of `toX(step)`: on the compare page every run counts its tokens differently.
  set(key, s) {
    this.series.set(key, { step: s.step, min: s.min, max: s.max, mean: s.mean, x: s.x });
    this.renderLegend();
  }

  // The x of bucket i of series s.
  xOf(s, i) {
    return s.x ? s.x[i] : this.toX(s.step[i]);
  }

  // Makes room for a series before its data arrives, so series keep their colours.
  ensure(key) {
    if (this.series.has(key)) return;
    this.series.set(key, { step: [], min: [], max: [], mean: [] });
    this.renderLegend();
  }

  // Adds one live step; a step already shown is ignored (a backfill may repeat one).
  append(key, step, v) {
    let s = this.series.get(key);
    if (!s) {
      s = { step: [], min: [], max: [], mean: [] };
      this.series.set(key, s);
      this.renderLegend();
    }
    if (s.step.length && step <= s.step[s.step.length - 1]) return;
    s.step.push(step);
    if (s.x) s.x.push(this.toX(step));
    s.min.push(v);
    s.max.push(v);
    s.mean.push(v);
  }

  // More points than pixels (live appends): time to refetch at pixel resolution.
  crowded() {
    for (const s of this.series.values()) if (s.step.length > this.width() * 1.5) return true;
    return false;
  }

  renderLegend() {
    if (!this.legend) return;
    const colours = theme().series;
    this.legend.replaceChildren();
    if (this.series.size < 2) return;
    [...this.series.keys()].forEach((k, i) => {
      const item = document.createElement("span");
      item.className = "key";
      item.style.setProperty("--key", colours[i % colours.length]);
      item.textContent = k;
      this.legend.append(item);
    });
  }

  // The x range covers the abandoned stretches too (they may run past the live branch); the
  // y range follows the live lines only, so the spike a rewind skipped does not flatten them.
  domains() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of this.abandoned) {
      const n = s.step.length;
      if (!n) continue;
      x0 = Math.min(x0, this.toX(s.step[0]));
      x1 = Math.max(x1, this.toX(s.step[n - 1]));
    }
    for (const s of this.series.values()) {
      const n = s.step.length;
      if (!n) continue;
      x0 = Math.min(x0, this.xOf(s, 0));
      x1 = Math.max(x1, this.xOf(s, n - 1));
      for (let i = 0; i < n; i++) {
        const lo = s.min[i], hi = s.max[i];
        if (Number.isFinite(lo) && (!this.log || lo > 0)) y0 = Math.min(y0, lo);
        if (Number.isFinite(hi) && (!this.log || hi > 0)) y1 = Math.max(y1, hi);
      }
    }
    if (!(x1 >= x0)) return null;
    if (x1 === x0) x1 = x0 + 1;
    if (!(y1 >= y0)) [y0, y1] = [0, 1];
    const log = this.log && y0 > 0;
    if (log) {
      [y0, y1] = y1 > y0 ? [y0 / 1.1, y1 * 1.1] : [y0 / 2, y1 * 2];
    } else {
      const pad = y1 > y0 ? (y1 - y0) * 0.05 : Math.max(Math.abs(y0), 1) * 0.05;
      [y0, y1] = [y0 - pad, y1 + pad];
    }
    return { x0, x1, y0, y1, log };
  }

  draw() {
    const { ctx, w, h } = fit(this.canvas);
    const t = theme();
    ctx.font = "11px system-ui, sans-serif";
    const d = this.domains();
    if (!d) {
      ctx.fillStyle = t.muted;
      ctx.textAlign = "center";
      ctx.fillText("no data yet", w / 2, h / 2);
      if (this.readout) this.readout.textContent = "";
      return;
    }
    const pw = w - M.l - M.r, ph = h - M.t - M.b;
    const px = (x) => M.l + ((x - d.x0) / (d.x1 - d.x0)) * pw;
    const ly = (v) => (d.log ? Math.log(v) : v);
    const py = (v) => M.t + ph - ((ly(v) - ly(d.y0)) / (ly(d.y1) - ly(d.y0))) * ph;
    this.axes(ctx, t, d, px, py, pw, ph);
    // What the x axis shows, and how far it reaches, for whoever inspects the page.
    Object.assign(this.canvas.dataset, { x: this.xName, x1: String(d.x1) });
    ctx.save();
    ctx.beginPath();
    ctx.rect(M.l, M.t, pw, ph);
    ctx.clip();
    this.drawIncidents(ctx, t, px, ph);
    this.drawAlerts(ctx, t, px, ph);
    const keys = [...this.series.keys()];
    this.drawAbandoned(ctx, t, keys, px, py, d);
    this.drawRewinds(ctx, t, px, ph);
    keys.forEach((k, i) => this.drawSeries(ctx, this.series.get(k), i, t, px, py, d, ph));
    ctx.restore();
    this.drawCommands(ctx, t, px, ph, pw);
    this.drawHover(ctx, t, d, px, ph, pw);
  }

  axes(ctx, t, d, px, py, pw, ph) {
    ctx.strokeStyle = t.grid;
    ctx.fillStyle = t.muted;
    ctx.lineWidth = 1;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const ys = d.log ? logTicks(d.y0, d.y1) : ticks(d.y0, d.y1, 4);
    for (const v of ys) {
      const y = Math.round(py(v)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(M.l, y);
      ctx.lineTo(M.l + pw, y);
      ctx.stroke();
      ctx.fillText(short(v), M.l - 6, y);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const v of ticks(d.x0, d.x1, Math.max(2, Math.floor(pw / 90)))) {
      // A label at the very left edge starts there, clear of the axis name beside it.
      const label = short(v);
      const x = px(v);
      const w = ctx.measureText(label).width;
      ctx.textAlign = x - w / 2 < M.l ? "left" : "center";
      ctx.fillText(label, ctx.textAlign === "left" ? Math.max(x, M.l) : x, M.t + ph + 6);
    }
    // The axis name under the value labels, left of the first tick.
    ctx.textAlign = "right";
    ctx.fillText(this.xName, M.l - 6, M.t + ph + 6);
    ctx.strokeRect(M.l + 0.5, M.t + 0.5, pw, ph);
  }

  // Each incident as one shaded band from its first alert to its last (at least 4 px wide),
  // paler once acknowledged.
  drawIncidents(ctx, t, px, ph) {
    ctx.save();
    for (const i of this.incidents) {
      const a = px(this.toX(i.start_step));
      const b = px(this.toX(i.end_step));
      if (!Number.isFinite(a) || !Number.isFinite(b)) continue;
      const lo = Math.min(a, b) - 2;
      const hi = Math.max(a, b) + 2;
      ctx.globalAlpha = i.acked_by == null ? 0.18 : 0.08;
      ctx.fillStyle = i.severity === "critical" ? t.bad : t.warn;
      ctx.fillRect(lo, M.t, hi - lo, ph);
    }
    ctx.restore();
  }

  // Dashed rules at alerts; when there are many, short ticks along the top instead, one per
  // pixel column, so a chatty alert cannot paint over the data.
  drawAlerts(ctx, t, px, ph) {
    const many = this.alerts.length > 40;
    const seen = new Set();
    ctx.setLineDash(many ? [] : [4, 3]);
    ctx.lineWidth = 1.5;
    for (const a of this.alerts) {
      const x = Math.round(px(this.toX(a.step))) + 0.5;
      if (seen.has(x)) continue;
      seen.add(x);
      ctx.strokeStyle = a.severity === "critical" ? t.bad : a.severity === "warning" ? t.warn : t.info;
      ctx.beginPath();
      ctx.moveTo(x, M.t);
      ctx.lineTo(x, many ? M.t + 6 : M.t + ph);
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  // Each abandoned stretch in its series' colour, faded and dashed, behind the live lines.
  drawAbandoned(ctx, t, keys, px, py, d) {
    const ok = (v) => Number.isFinite(v) && (!d.log || v > 0);
    ctx.save();
    ctx.globalAlpha = 0.3;
    ctx.setLineDash([5, 4]);
    ctx.lineWidth = 1.5;
    for (const s of this.abandoned) {
      const i = Math.max(0, keys.indexOf(s.key));
      ctx.strokeStyle = t.series[i % t.series.length];
      ctx.beginPath();
      let pen = false;
      for (let j = 0; j < s.step.length; j++) {
        const v = s.mean[j];
        if (!ok(v)) {
          pen = false;
          continue;
        }
        const x = px(this.toX(s.step[j])), y = py(v);
        if (pen) ctx.lineTo(x, y);
        else ctx.moveTo(x, y);
        pen = true;
      }
      ctx.stroke();
    }
    ctx.restore();
  }

  // A thin rule at each fork step, labelled "rewind" along the top.
  drawRewinds(ctx, t, px, ph) {
    ctx.save();
    ctx.strokeStyle = ctx.fillStyle = t.muted;
    ctx.lineWidth = 1;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    for (const f of this.rewinds) {
      const x = Math.round(px(this.toX(f))) + 0.5;
      ctx.globalAlpha = 0.6;
      ctx.beginPath();
      ctx.moveTo(x, M.t);
      ctx.lineTo(x, M.t + ph);
      ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.fillText("rewind", x + 3, M.t + 2);
    }
    ctx.restore();
  }

  // A solid rule and a triangle on the time axis at each applied command, so an LR change
  // lines up with its effect; one a rule issued is labelled with the rule (`rule:0`).
  drawCommands(ctx, t, px, ph, pw) {
    ctx.strokeStyle = ctx.fillStyle = t.ok;
    ctx.lineWidth = 1;
    ctx.textBaseline = "bottom";
    ctx.textAlign = "left";
    for (const c of this.commands) {
      const x = Math.round(px(this.toX(c.step))) + 0.5;
      if (x < M.l || x > M.l + pw) continue;
      ctx.globalAlpha = 0.5;
      ctx.beginPath();
      ctx.moveTo(x, M.t);
      ctx.lineTo(x, M.t + ph);
      ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.beginPath();
      ctx.moveTo(x, M.t + ph - 7);
      ctx.lineTo(x - 4, M.t + ph);
      ctx.lineTo(x + 4, M.t + ph);
      ctx.fill();
      if (c.by?.startsWith("rule:")) ctx.fillText(`${c.by} ${c.label}`, x + 6, M.t + ph - 1);
    }
  }

  drawSeries(ctx, s, index, t, px, py, d, ph) {
    const colour = t.series[index % t.series.length];
    const n = s.step.length;
    const ok = (v) => Number.isFinite(v) && (!d.log || v > 0);
    if (index === 0) {
      ctx.fillStyle = t.band;
      for (let i = 0; i < n; i++) {
        if (!ok(s.min[i]) || !ok(s.max[i]) || s.min[i] === s.max[i]) continue;
        const x0 = px(this.xOf(s, i));
        const x1 = i + 1 < n ? px(this.xOf(s, i + 1)) : x0 + 1;
        const y1 = py(s.min[i]), y0 = py(s.max[i]);
        ctx.fillRect(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0));
      }
    }
    ctx.strokeStyle = colour;
    ctx.lineWidth = index === 0 ? 2 : 1.25;
    ctx.beginPath();
    let pen = false;
    for (let i = 0; i < n; i++) {
      const v = s.mean[i];
      if (!ok(v)) {
        pen = false;
        continue;
      }
      const x = px(this.xOf(s, i)), y = py(v);
      if (pen) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      pen = true;
    }
    ctx.stroke();
    // Non-finite buckets: a red tick from the top, never silently a gap.
    ctx.fillStyle = t.bad;
    ctx.strokeStyle = t.bad;
    ctx.lineWidth = 1;
    for (let i = 0; i < n; i++) {
      if (Number.isFinite(s.max[i]) && Number.isFinite(s.mean[i])) continue;
      const x = Math.round(px(this.xOf(s, i))) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x - 5, M.t);
      ctx.lineTo(x + 5, M.t);
      ctx.lineTo(x, M.t + 9);
      ctx.fill();
      ctx.globalAlpha = 0.35;
      ctx.beginPath();
      ctx.moveTo(x, M.t + 9);
      ctx.lineTo(x, M.t + ph);
      ctx.stroke();
      ctx.globalAlpha = 1;
    }
  }

  // The cursor rule and, in the caption, the values of the nearest bucket of each series.
  drawHover(ctx, t, d, px, ph, pw) {
    if (!this.readout) return;
    if (this.hover == null || this.hover < M.l || this.hover > M.l + pw) {
      this.readout.textContent = "";
      return;
    }
    const x = d.x0 + ((this.hover - M.l) / pw) * (d.x1 - d.x0);
    ctx.strokeStyle = t.muted;
    ctx.beginPath();
    ctx.moveTo(this.hover + 0.5, M.t);
    ctx.lineTo(this.hover + 0.5, M.t + ph);
    ctx.stroke();
    const parts = [];
    let at = null;
    for (const [k, s] of this.series) {
      const i = nearest(s.step.map((_, j) => this.xOf(s, j)), x);
      if (i < 0) continue;
      at ??= s.step[i];
      parts.push(`${k} ${metric(s.mean[i])}`);
    }
    this.readout.textContent = at == null ? "" : `step ${at.toLocaleString("en-US")} · ${parts.join(" · ")}`;
  }
}

// Index of the last element of the ascending array xs that is ≤ x (0 if none), -1 if empty.
export function nearest(xs, x) {
  let lo = 0, hi = xs.length - 1;
  if (hi < 0) return -1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (xs[mid] <= x) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Tokens seen at `step` by a run whose token counts are `t` ({step, value}), interpolated
// between the known counts and held at the ends (the step itself when none are known yet).
export function tokensAt(t, step) {
  const { step: xs, value: ys } = t;
  if (!xs.length) return step;
  let lo = 0, hi = xs.length - 1;
  if (step <= xs[0]) return ys[0];
  if (step >= xs[hi]) return ys[hi];
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] <= step) lo = mid;
    else hi = mid;
  }
  return ys[lo] + ((ys[hi] - ys[lo]) * (step - xs[lo])) / (xs[hi] - xs[lo]);
}
