// A layer × step heatmap on a canvas. It asks the server for one bucket per pixel column of
// its plot and colours each cell by the bucket's max (or mean/min, as chosen), so a one-step
// spike shows at every zoom; where several buckets share a pixel column (live steps added
// since the last fetch) the cell keeps the largest. Hover shows the value, dragging zooms into
// a step range (re-queried at that resolution), a double-click zooms out, a click picks the
// step for the per-layer profile.

import { colorOf, colorAt, fitScale, valueAt } from "./colormap.js";
import { count, fit, getJSON, metric, num, short, theme, ticks } from "./keel.js";
import { nearest } from "./linechart.js";

const M = { l: 40, r: 92, t: 6, b: 22 };

// Where each bucket ends: one width for all, the median distance between bucket starts, and
// never into the next bucket (the rule of server/src/charts/heatmap.rs).
export function bucketEnds(steps) {
  const gaps = [];
  for (let i = 1; i < steps.length; i++) gaps.push(steps[i] - steps[i - 1]);
  gaps.sort((a, b) => a - b);
  const width = Math.max(1, gaps.length ? gaps[Math.floor(gaps.length / 2)] : 1);
  return steps.map((s, i) => (i + 1 < steps.length ? Math.min(steps[i + 1], s + width) : s + width));
}

// IEEE total order as the server uses it: NaN above +Infinity.
const bigger = (a, b) => (Number.isNaN(a) ? a : Number.isNaN(b) ? b : Math.max(a, b));
const smaller = (a, b) => (Number.isNaN(a) ? b : Number.isNaN(b) ? a : Math.min(a, b));

// Per pixel column and layer of a plot `pw` px wide over steps `dom`, the value drawn there:
// bucket i covers its pixels from its step to its end (`bucketEnds`), so a missing bucket
// leaves its pixels empty (`has[x]` is 0); where several buckets share a pixel column the cell
// keeps the largest for `max`, the smallest for `min` and the newest for `mean`. The run page's
// heatmap and the compare page's draw through this one function.
export function pixelColumns(steps, rows, layers, pw, dom, field) {
  const L = layers;
  const vals = new Float64Array(pw * L);
  const has = new Uint8Array(pw);
  const ends = bucketEnds(steps);
  const span = dom[1] - dom[0];
  for (let i = 0; i < steps.length; i++) {
    const a = Math.floor(((steps[i] - dom[0]) / span) * pw);
    const b = Math.max(a + 1, Math.floor(((ends[i] - dom[0]) / span) * pw));
    for (let x = Math.max(0, a); x < Math.min(pw, b); x++) {
      for (let l = 0; l < L; l++) {
        const v = rows[i][l], k = x * L + l;
        if (!has[x] || field === "mean") vals[k] = v;
        else vals[k] = field === "max" ? bigger(vals[k], v) : smaller(vals[k], v);
      }
      has[x] = 1;
    }
  }
  return { vals, has };
}

export class Heatmap {
  // `rows` names what a row is: a layer (block), or a rank of a distributed run.
  constructor(parent, { runId, stat, layers, rows = "layer", onPick }) {
    Object.assign(this, { runId, stat, layers, rows, onPick });
    this.field = "max";
    this.range = null;
    this.data = null;
    this.alerts = [];
    this.picked = null;
    this.build(parent);
    this.listen();
  }

  build(parent) {
    const fig = document.createElement("figure");
    fig.className = "heatmap panel";
    fig.dataset.stat = this.stat;
    fig.innerHTML = `<figcaption><b></b><span class="unit">${this.rows} × step</span>
      <label class="field">colour by <select><option>max</option><option>mean</option><option>min</option></select></label>
      <span class="zoom"></span></figcaption>
      <div class="wrap"><canvas></canvas><div class="tip" hidden></div></div>`;
    fig.querySelector("b").textContent = this.stat;
    parent.append(fig);
    this.fig = fig;
    this.canvas = fig.querySelector("canvas");
    this.canvas.style.height = `${heightFor(this.layers)}px`;
    this.tip = fig.querySelector(".tip");
    this.zoomNote = fig.querySelector(".zoom");
    fig.querySelector("select").addEventListener("change", (e) => {
      this.field = e.target.value;
      this.draw();
    });
  }

  width() {
    return Math.max(50, Math.floor(this.canvas.clientWidth) - M.l - M.r);
  }

  async load() {
    const q = new URLSearchParams({ columns: this.width() });
    if (this.range) {
      q.set("from", this.range.from);
      q.set("to", this.range.to);
    }
    const m = await getJSON(`/api/v1/runs/${this.runId}/layers/${encodeURIComponent(this.stat)}?${q}`);
    const rows = (a) => a.map((r) => Float64Array.from(r, num));
    this.data = { step: m.step, min: rows(m.min), max: rows(m.max), mean: rows(m.mean) };
    this.unit = this.data.step.length > 1 ? this.data.step[1] - this.data.step[0] : 1;
    this.draw();
  }

  // A live step: drawn at once while the view is whole and one bucket is one step; otherwise
  // the caller re-queries (throttled). Returns whether a re-query is due.
  append(step, values) {
    const d = this.data;
    if (!d || this.range) return false;
    const n = d.step.length;
    if (n && step <= d.step[n - 1]) return false;
    if (this.unit > 1 || n >= this.width()) return true;
    const v = Float64Array.from(values, num);
    d.step.push(step);
    d.min.push(v);
    d.max.push(v);
    d.mean.push(v);
    this.draw();
    return false;
  }

  domain() {
    const d = this.data;
    if (this.range) return [this.range.from, this.range.to + 1];
    if (!d || !d.step.length) return null;
    const ends = bucketEnds(d.step);
    return [d.step[0], ends[ends.length - 1]];
  }

  // Per pixel column and layer, the value drawn there (see `pixelColumns`).
  columns(pw, dom) {
    const d = this.data;
    return pixelColumns(d.step, d[this.field], this.layers, pw, dom, this.field);
  }

  draw() {
    const { ctx, w, h } = fit(this.canvas);
    const t = theme();
    const pw = w - M.l - M.r, ph = h - M.t - M.b, L = this.layers;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = t.grid;
    ctx.fillRect(M.l, M.t, pw, ph);
    const dom = this.domain();
    this.geometry = { pw, ph, dom };
    this.zoomNote.textContent = this.range
      ? `steps ${count(this.range.from)}–${count(this.range.to)} · double-click for all`
      : "drag to zoom · click for the profile";
    if (!dom || !this.data.step.length) {
      ctx.fillStyle = t.muted;
      ctx.textAlign = "center";
      ctx.fillText("no data yet", M.l + pw / 2, M.t + ph / 2);
      return;
    }
    const { vals, has } = this.columns(pw, dom);
    const scale = fitScale(vals.filter((_, k) => has[Math.floor(k / L)]));
    this.scale = scale;
    if (scale) this.paint(ctx, vals, has, scale, pw, ph);
    this.axes(ctx, t, dom, pw, ph);
    this.marks(ctx, t, dom, pw, ph);
    if (scale) this.legend(ctx, t, scale, w, ph);
    this.canvas.dataset.drawn = String(this.data.step.length);
  }

  // One image pixel per (column, layer), stretched to the plot without smoothing.
  paint(ctx, vals, has, scale, pw, ph) {
    const L = this.layers;
    const img = new ImageData(pw, L);
    for (let x = 0; x < pw; x++) {
      if (!has[x]) continue;
      for (let l = 0; l < L; l++) {
        const [r, g, b] = colorOf(scale, vals[x * L + l]);
        const p = ((L - 1 - l) * pw + x) * 4;
        img.data[p] = r;
        img.data[p + 1] = g;
        img.data[p + 2] = b;
        img.data[p + 3] = 255;
      }
    }
    const off = new OffscreenCanvas(pw, L);
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, M.l, M.t, pw, ph);
  }

  axes(ctx, t, dom, pw, ph) {
    ctx.fillStyle = t.muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const L = this.layers, every = Math.max(1, Math.ceil(L / Math.max(2, Math.floor(ph / 18))));
    // Every `every`-th layer, and the last one unless it would crowd the one below it.
    const labelled = (l) => l % every === 0 || (l === L - 1 && l % every >= every * 0.6);
    for (let l = 0; l < L; l++) {
      if (labelled(l)) ctx.fillText(String(l), M.l - 6, M.t + ph - ((l + 0.5) / L) * ph);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const s of ticks(dom[0], dom[1], Math.max(2, Math.floor(pw / 90)))) {
      ctx.fillText(short(s), M.l + ((s - dom[0]) / (dom[1] - dom[0])) * pw, M.t + ph + 6);
    }
    ctx.save();
    ctx.translate(10, M.t + ph / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(this.rows, 0, -4);
    ctx.restore();
  }

  // Alerts as triangles under the axis, the picked step as a rule, a drag as a shade.
  marks(ctx, t, dom, pw, ph) {
    const px = (s) => M.l + ((s - dom[0]) / (dom[1] - dom[0])) * pw;
    for (const a of this.alerts) {
      const x = px(a.step);
      if (x < M.l || x > M.l + pw) continue;
      ctx.fillStyle = a.severity === "critical" ? t.bad : a.severity === "warning" ? t.warn : t.info;
      ctx.beginPath();
      ctx.moveTo(x, M.t + ph);
      ctx.lineTo(x - 5, M.t + ph + 7);
      ctx.lineTo(x + 5, M.t + ph + 7);
      ctx.fill();
    }
    if (this.picked != null) {
      const x = Math.round(px(this.picked)) + 0.5;
      ctx.strokeStyle = t.fg;
      ctx.beginPath();
      ctx.moveTo(x, M.t);
      ctx.lineTo(x, M.t + ph);
      ctx.stroke();
    }
    if (this.drag && Math.abs(this.drag.x1 - this.drag.x0) > 3) {
      ctx.fillStyle = "rgba(255,255,255,0.3)";
      ctx.strokeStyle = t.fg;
      const a = Math.min(this.drag.x0, this.drag.x1), b = Math.max(this.drag.x0, this.drag.x1);
      ctx.fillRect(a, M.t, b - a, ph);
      ctx.strokeRect(a + 0.5, M.t + 0.5, b - a, ph);
    }
  }

  legend(ctx, t, scale, w, ph) {
    const x = w - M.r + 14, top = M.t, bottom = M.t + ph - 38;
    for (let y = top; y < bottom; y++) {
      const [r, g, b] = colorAt(1 - (y - top + 0.5) / (bottom - top));
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.fillRect(x, y, 12, 1);
    }
    ctx.fillStyle = t.muted;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(short(scale.hi), x + 16, top);
    ctx.textBaseline = "middle";
    ctx.fillText(scale.log ? "log" : "linear", x + 16, (top + bottom) / 2);
    ctx.fillText(short(valueAt(scale, 0.5)), x + 16, (top + bottom) / 2 + 13);
    ctx.textBaseline = "bottom";
    ctx.fillText(short(scale.lo), x + 16, bottom);
    [["NaN", "rgb(255,0,200)"], ["±∞", "rgb(230,30,30)"]].forEach(([name, colour], i) => {
      const y = M.t + ph - 30 + i * 16;
      ctx.fillStyle = colour;
      ctx.fillRect(x, y, 12, 11);
      ctx.fillStyle = t.muted;
      ctx.textBaseline = "middle";
      ctx.fillText(name, x + 16, y + 6);
    });
  }

  // The bucket and layer under a point of the canvas, or null.
  cellAt(cx, cy) {
    const g = this.geometry, d = this.data;
    if (!g || !g.dom || !d || !d.step.length) return null;
    const x = cx - M.l, y = cy - M.t;
    if (x < 0 || x >= g.pw || y < 0 || y >= g.ph) return null;
    const s = g.dom[0] + ((Math.floor(x) + 0.5) / g.pw) * (g.dom[1] - g.dom[0]);
    const i = nearest(d.step, s);
    const ends = bucketEnds(d.step);
    if (s < d.step[i] || s >= ends[i]) return null;
    const layer = this.layers - 1 - Math.floor((y / g.ph) * this.layers);
    return { i, layer, from: d.step[i], to: ends[i] - 1 };
  }

  stepAt(cx) {
    const g = this.geometry;
    const x = Math.min(Math.max(cx - M.l, 0), g.pw);
    return Math.round(g.dom[0] + (x / g.pw) * (g.dom[1] - g.dom[0]));
  }

  showTip(cx, cy) {
    const c = this.cellAt(cx, cy);
    if (!c) {
      this.tip.hidden = true;
      return;
    }
    const d = this.data;
    const steps = c.from === c.to ? `step ${count(c.from)}` : `steps ${count(c.from)}–${count(c.to)}`;
    const v = (f) => metric(d[f][c.i][c.layer]);
    this.tip.textContent = `${this.stat} · ${this.rows} ${c.layer} · ${steps}\nmax ${v("max")} · mean ${v("mean")} · min ${v("min")}`;
    this.tip.hidden = false;
    const wrap = this.tip.parentElement.clientWidth;
    const left = cx + 14 + this.tip.offsetWidth > wrap ? cx - 14 - this.tip.offsetWidth : cx + 14;
    this.tip.style.left = `${left}px`;
    this.tip.style.top = `${Math.max(0, cy - 40)}px`;
  }

  listen() {
    const pos = (e) => {
      const r = this.canvas.getBoundingClientRect();
      return [e.clientX - r.left, e.clientY - r.top];
    };
    this.canvas.addEventListener("mousemove", (e) => {
      const [x, y] = pos(e);
      if (this.drag) {
        this.drag.x1 = x;
        this.draw();
      }
      this.showTip(x, y);
    });
    this.canvas.addEventListener("mouseleave", () => {
      this.tip.hidden = true;
    });
    this.canvas.addEventListener("mousedown", (e) => {
      const [x] = pos(e);
      if (this.geometry?.dom) this.drag = { x0: x, x1: x };
    });
    window.addEventListener("mouseup", (e) => this.release(pos(e)[0]));
    this.canvas.addEventListener("dblclick", () => {
      this.range = null;
      this.load();
    });
  }

  // End of a drag: a zoom when it covered a few pixels, else a click that picks a step.
  release(x) {
    const drag = this.drag;
    if (!drag) return;
    this.drag = null;
    if (Math.abs(x - drag.x0) > 4) {
      const a = this.stepAt(Math.min(x, drag.x0)), b = this.stepAt(Math.max(x, drag.x0));
      if (b > a) {
        this.range = { from: a, to: b };
        this.load();
        return;
      }
    }
    const c = this.cellAt(drag.x0, M.t + 1);
    if (c) this.onPick(this.stat, c.from);
    this.draw();
  }
}

// Taller for deep models, never taller than the screen needs.
function heightFor(layers) {
  return Math.min(340, Math.max(150, layers * 6)) + M.t + M.b;
}
