// The per-layer profile: one statistic across depth at one step (layer on x, log y), over a
// faint line of the run's first step. Variance that grows with depth shows here as a line
// that climbs to the right and keeps climbing as the run goes on.

import { count, fit, logTicks, metric, short, theme, ticks } from "./keel.js";

const M = { l: 50, r: 12, t: 10, b: 30 };

export class Profile {
  constructor(aside) {
    this.canvas = aside.querySelector("canvas");
    this.what = aside.querySelector("#profile-what");
    this.growth = aside.querySelector("#profile-growth");
    this.view = null;
  }

  // `values` and `first` are numbers per layer; `latest` says whether it follows the run.
  show(view) {
    this.view = view;
    this.draw();
  }

  draw() {
    const { ctx, w, h } = fit(this.canvas);
    const t = theme();
    ctx.font = "11px system-ui, sans-serif";
    const v = this.view;
    if (!v || !v.values) {
      this.what.textContent = "";
      this.growth.textContent = "";
      ctx.fillStyle = t.muted;
      ctx.textAlign = "center";
      ctx.fillText("no layer statistics yet", w / 2, h / 2);
      return;
    }
    const L = v.values.length;
    // A `rank_*` statistic of a distributed run has a value per rank, not per layer.
    const rows = v.stat.startsWith("rank_") ? "rank" : "layer";
    this.what.textContent = `${v.stat} at step ${count(v.step)}${v.latest ? " (latest)" : ""}`;
    if (rows === "rank") {
      // The spread across ranks: a straggler is the highest.
      const finite = v.values.filter(Number.isFinite);
      const top = v.values.indexOf(Math.max(...finite));
      this.growth.textContent = `highest: rank ${top}, ×${short(Math.max(...finite) / Math.min(...finite))} the lowest`;
    } else {
      // Last over first layer: the depth-growth ratio, now and at the run's first step.
      const ratio = (xs) => (xs && L > 1 ? short(xs[L - 1] / xs[0]) : "—");
      this.growth.textContent = `last / first layer: ×${ratio(v.values)} (first step ×${ratio(v.first)})`;
    }
    const all = [...v.values, ...(v.first || [])].filter(Number.isFinite);
    let lo = Math.min(...all), hi = Math.max(...all);
    const log = lo > 0;
    if (!(hi > lo)) [lo, hi] = log ? [lo / 2, hi * 2] : [lo - 1, hi + 1];
    if (log) [lo, hi] = [lo / 1.15, hi * 1.15];
    const pw = w - M.l - M.r, ph = h - M.t - M.b;
    const px = (l) => M.l + (L > 1 ? (l / (L - 1)) * pw : pw / 2);
    const f = (x) => (log ? Math.log(x) : x);
    const py = (x) => M.t + ph - ((f(x) - f(lo)) / (f(hi) - f(lo))) * ph;
    this.axes(ctx, t, { lo, hi, log, L, pw, ph, px, py, rows });
    if (v.first) {
      ctx.setLineDash([5, 4]);
      this.line(ctx, v.first, t.muted, px, py, 1.25, false);
      ctx.setLineDash([]);
    }
    this.line(ctx, v.values, t.series[0], px, py, 2, true);
    // Non-finite layers: red markers along the top.
    ctx.fillStyle = t.bad;
    v.values.forEach((x, l) => {
      if (!Number.isFinite(x)) ctx.fillRect(px(l) - 3, M.t, 6, 6);
    });
    this.canvas.title = v.values.map((x, l) => `${rows} ${l}: ${metric(x)}`).join("\n");
  }

  axes(ctx, t, g) {
    ctx.strokeStyle = t.grid;
    ctx.fillStyle = t.muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const y of g.log ? logTicks(g.lo, g.hi) : ticks(g.lo, g.hi, 4)) {
      const yy = Math.round(g.py(y)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(M.l, yy);
      ctx.lineTo(M.l + g.pw, yy);
      ctx.stroke();
      ctx.fillText(short(y), M.l - 6, yy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const every = Math.max(1, Math.ceil(g.L / 8));
    for (let l = 0; l < g.L; l += every) ctx.fillText(String(l), g.px(l), M.t + g.ph + 5);
    ctx.fillText(g.rows, M.l + g.pw / 2, M.t + g.ph + 17);
  }

  line(ctx, values, colour, px, py, width, dots) {
    ctx.strokeStyle = colour;
    ctx.fillStyle = colour;
    ctx.lineWidth = width;
    ctx.beginPath();
    let pen = false;
    values.forEach((x, l) => {
      if (!Number.isFinite(x)) {
        pen = false;
        return;
      }
      if (pen) ctx.lineTo(px(l), py(x));
      else ctx.moveTo(px(l), py(x));
      pen = true;
    });
    ctx.stroke();
    if (!dots) return;
    values.forEach((x, l) => {
      if (!Number.isFinite(x)) return;
      ctx.beginPath();
      ctx.arc(px(l), py(x), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
}
