// The compare page: several runs side by side. Every chart is fetched at the width it is
// drawn (one point per pixel, one heatmap column per pixel). Each run keeps one colour
// everywhere: the index of its row into the theme's series palette.
//
// Loss charts reuse LineChart with one series per run, EMA-smoothed here, over steps or over
// tokens: each run's `tokens` series is fetched at the same resolution and every bucket
// gets its run's token count as its x (runs count tokens differently, so one step→x
// function cannot serve them all). The depth plot draws each run's per-layer statistic at
// one step (log y). The heatmaps are drawn on one colour scale: the min and max over every
// run's fetched matrix. While a run is going the page refetches every few seconds. The
// export links carry the page's options to the server's rendering of the same comparison.

import { LineChart, tokensAt } from "./linechart.js";
import { colorOf, fitScale, valueAt, colorAt } from "./colormap.js";
import { bucketEnds, pixelColumns } from "./heatmap.js";
import { connState, count, fit, getJSON, logTicks, metric, num, short, theme, ticks } from "./keel.js";

const root = document.getElementById("compare");
const boot = JSON.parse(root.dataset.boot);
const runs = boot.runs;
const report = (e) => console.warn("keel:", e);
const path = (key) => key.split("/").map(encodeURIComponent).join("/");
const decode = (s) => ({ step: s.step, mean: s.mean.map(num) });
const colour = (i) => {
  const c = theme().series;
  return c[i % c.length];
};

for (const sw of document.querySelectorAll(".swatch[data-index]")) {
  sw.style.background = colour(Number(sw.dataset.index));
}

// --- Loss curves ------------------------------------------------------------------------

const smoothing = document.getElementById("smoothing");
const smoothingValue = document.getElementById("smoothing-value");
const xAxis = { mode: "steps", tokens: new Map() };

// Exponential moving average with weight `a` on the past; non-finite values pass through
// unsmoothed (and do not poison the average), so a NaN still shows.
export function ema(values, a) {
  const out = new Array(values.length);
  let acc = null;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isFinite(v)) {
      out[i] = v;
      continue;
    }
    acc = acc == null ? v : a * acc + (1 - a) * v;
    out[i] = acc;
  }
  return out;
}

// One LineChart per loss key, each with one series per run (in run order, for the colours).
const lossCharts = [...document.querySelectorAll(".charts figure.chart")].map((fig) => {
  const chart = new LineChart(fig);
  runs.forEach((r) => chart.ensure(r.name));
  return { key: fig.dataset.key, chart, raw: new Map() };
});

function smooth(c) {
  const a = Number(smoothing.value);
  const byTokens = xAxis.mode === "tokens";
  c.chart.xName = byTokens ? "tokens" : "step";
  for (const r of runs) {
    const s = c.raw.get(r.id);
    if (!s) continue;
    const m = ema(s.mean, a);
    const t = xAxis.tokens.get(r.id);
    if (!byTokens) c.chart.set(r.name, { step: s.step, min: m, max: m, mean: m });
    // A run without token counts has no place on a tokens axis.
    else if (!t || !t.step.length) c.chart.set(r.name, { step: [], min: [], max: [], mean: [] });
    else c.chart.set(r.name, { step: s.step, x: s.step.map((st) => tokensAt(t, st)), min: m, max: m, mean: m });
  }
  c.chart.draw();
}

async function loadLosses() {
  const jobs = [];
  for (const c of lossCharts) {
    const w = c.chart.width();
    for (const r of runs) {
      if (!r.scalars.includes(c.key)) continue;
      jobs.push(
        getJSON(`/api/v1/runs/${r.id}/scalars/${path(c.key)}?points=${w}`).then((s) => c.raw.set(r.id, decode(s))),
      );
    }
  }
  // Token counts at the loss chart's resolution, for the tokens axis.
  const w = lossCharts[0].chart.width();
  for (const r of runs) {
    if (!r.scalars.includes("tokens")) continue;
    jobs.push(
      getJSON(`/api/v1/runs/${r.id}/scalars/tokens?points=${w}`).then((s) =>
        xAxis.tokens.set(r.id, { step: s.step, value: s.min.map(num) }),
      ),
    );
  }
  await Promise.all(jobs);
  lossCharts.forEach(smooth);
}

smoothing.addEventListener("input", () => {
  smoothingValue.textContent = Number(smoothing.value).toFixed(2);
  lossCharts.forEach(smooth);
  exportLinks();
});

for (const b of document.querySelectorAll("#x-axis button")) {
  b.addEventListener("click", () => {
    xAxis.mode = b.dataset.x;
    for (const o of document.querySelectorAll("#x-axis button")) {
      o.setAttribute("aria-pressed", String(o === b));
    }
    lossCharts.forEach(smooth);
    exportLinks();
  });
}

// The loss chart's log button (its own listener, added first, has flipped it already).
document.querySelector("#chart-loss [data-log]")?.addEventListener("click", () => exportLinks());

// --- Export --------------------------------------------------------------------------------

// The export links: the runs of the page and its current options, for the server to draw
// the same comparison (PNG, SVG) or write the loss of every run as one table (CSV).
function exportLinks() {
  const q = new URLSearchParams(boot.export);
  const figure = new URLSearchParams(q);
  figure.set("x", xAxis.mode);
  figure.set("smooth", Number(smoothing.value).toFixed(2));
  if (lossCharts[0]?.chart.log) figure.set("log", "1");
  if (statSelect) figure.set("stat", statSelect.value);
  if (heatBy) figure.set("by", heatBy.value);
  if (stepInput && !profile.follow) figure.set("step", stepInput.value);
  for (const format of ["png", "svg"]) {
    document.getElementById(`export-${format}`).href = `/api/v1/compare.${format}?${figure}`;
  }
  document.getElementById("export-csv").href = `/api/v1/compare.csv?${q}`;
}

// --- Depth profile ----------------------------------------------------------------------

const statSelect = document.getElementById("stat");
const stepInput = document.getElementById("step");
const stepValue = document.getElementById("step-value");
const latest = document.getElementById("step-latest");
const depthCanvas = document.getElementById("depth");
const profile = { stat: statSelect?.value, follow: true, lines: new Map() };

function lastStep() {
  return Math.max(0, ...runs.map((r) => r.last_step ?? 0));
}

function syncStepInput() {
  if (!stepInput) return;
  stepInput.max = String(lastStep());
  if (profile.follow) stepInput.value = stepInput.max;
  stepValue.textContent = profile.follow ? `${count(Number(stepInput.value))} (latest)` : count(Number(stepInput.value));
}

let profileTicket = 0;

async function loadProfile() {
  if (!depthCanvas) return;
  const ticket = ++profileTicket;
  const want = Number(stepInput.value);
  const stat = statSelect.value;
  const lines = new Map();
  await Promise.all(
    runs.map(async (r) => {
      if (!r.layer_stats.includes(stat) || r.last_step == null) return;
      // A run that has not got that far shows its newest step.
      const step = Math.min(want, r.last_step);
      const m = await getJSON(`/api/v1/runs/${r.id}/layers/${encodeURIComponent(stat)}?from=${step}&to=${step}&columns=1`);
      if (m.step.length) lines.set(r.id, { step: m.step[0], values: m.mean[0].map(num) });
    }),
  );
  if (ticket !== profileTicket) return;
  profile.lines = lines;
  drawProfile();
}

const DM = { l: 54, r: 12, t: 10, b: 30 };

function drawProfile() {
  const { ctx, w, h } = fit(depthCanvas);
  const t = theme();
  ctx.font = "11px system-ui, sans-serif";
  let layers = 0, lo = Infinity, hi = -Infinity;
  for (const { values } of profile.lines.values()) {
    layers = Math.max(layers, values.length);
    for (const v of values) {
      if (Number.isFinite(v) && v > 0) {
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    }
  }
  if (!(hi >= lo) || layers === 0) {
    ctx.fillStyle = t.muted;
    ctx.textAlign = "center";
    ctx.fillText("no data yet", w / 2, h / 2);
    depthCanvas.dataset.drawn = "0";
    return;
  }
  if (hi === lo) [lo, hi] = [lo / 2, hi * 2];
  else [lo, hi] = [lo / 1.1, hi * 1.1];
  const pw = w - DM.l - DM.r, ph = h - DM.t - DM.b;
  const px = (l) => DM.l + (layers > 1 ? (l / (layers - 1)) * pw : pw / 2);
  const py = (v) => DM.t + ph - ((Math.log(v) - Math.log(lo)) / (Math.log(hi) - Math.log(lo))) * ph;
  ctx.strokeStyle = t.grid;
  ctx.fillStyle = t.muted;
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (const v of logTicks(lo, hi)) {
    const y = Math.round(py(v)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(DM.l, y);
    ctx.lineTo(DM.l + pw, y);
    ctx.stroke();
    ctx.fillText(short(v), DM.l - 6, y);
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const every = Math.max(1, Math.ceil(layers / Math.max(2, Math.floor(pw / 40))));
  for (let l = 0; l < layers; l += every) ctx.fillText(String(l), px(l), DM.t + ph + 5);
  ctx.fillText("layer", DM.l + pw / 2, DM.t + ph + 17);
  ctx.strokeRect(DM.l + 0.5, DM.t + 0.5, pw, ph);
  runs.forEach((r, i) => {
    const line = profile.lines.get(r.id);
    if (!line) return;
    ctx.strokeStyle = ctx.fillStyle = colour(i);
    ctx.lineWidth = 2;
    ctx.beginPath();
    let pen = false;
    line.values.forEach((v, l) => {
      if (!(Number.isFinite(v) && v > 0)) {
        pen = false;
        return;
      }
      if (pen) ctx.lineTo(px(l), py(v));
      else ctx.moveTo(px(l), py(v));
      pen = true;
    });
    ctx.stroke();
    line.values.forEach((v, l) => {
      if (!(Number.isFinite(v) && v > 0)) return;
      ctx.beginPath();
      ctx.arc(px(l), py(v), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    });
  });
  depthCanvas.dataset.drawn = String(profile.lines.size);
}

statSelect?.addEventListener("change", () => {
  exportLinks();
  loadProfile().catch(report);
  loadHeatmaps().catch(report);
});
stepInput?.addEventListener("input", () => {
  profile.follow = Number(stepInput.value) >= lastStep();
  latest.setAttribute("aria-pressed", String(profile.follow));
  syncStepInput();
});
stepInput?.addEventListener("change", () => {
  exportLinks();
  loadProfile().catch(report);
});
latest?.addEventListener("click", () => {
  profile.follow = true;
  exportLinks();
  latest.setAttribute("aria-pressed", "true");
  syncStepInput();
  loadProfile().catch(report);
});

// --- Heatmaps on one scale --------------------------------------------------------------

const HM = { l: 28, r: 6, t: 4, b: 18 };
const heatFigures = [...document.querySelectorAll(".compare-heatmap")].map((fig) => ({
  id: Number(fig.dataset.run),
  canvas: fig.querySelector("canvas"),
  data: null,
}));
const legendCanvas = document.getElementById("heat-legend");
let heatScale = null;

const heatBy = document.getElementById("heat-by");

async function loadHeatmaps() {
  if (!heatFigures.length) return;
  const stat = statSelect.value;
  await Promise.all(
    heatFigures.map(async (f) => {
      const run = runs.find((r) => r.id === f.id);
      if (!run.layer_stats.includes(stat)) {
        f.data = null;
        return;
      }
      const cols = Math.max(20, Math.floor(f.canvas.clientWidth) - HM.l - HM.r);
      const m = await getJSON(`/api/v1/runs/${f.id}/layers/${encodeURIComponent(stat)}?columns=${cols}`);
      const rows = (field) => m[field].map((r) => r.map(num));
      f.data = { step: m.step, min: rows("min"), max: rows("max"), mean: rows("mean"), layers: run.layers };
    }),
  );
  paintHeatmaps();
}

// Every run's heatmap on one scale (over the cells drawn, of the value chosen), then the legend.
function paintHeatmaps() {
  const by = heatBy?.value ?? "max";
  document.getElementById("heat-what").textContent = `${statSelect.value} (${by} per bucket)`;
  for (const f of heatFigures) f.cells = null;
  for (const f of heatFigures) {
    const d = f.data;
    if (!d || !d.step.length) continue;
    const pw = Math.max(1, Math.floor(f.canvas.clientWidth) - HM.l - HM.r);
    const ends = bucketEnds(d.step);
    const dom = [d.step[0], ends[ends.length - 1]];
    f.cells = { pw, dom, ...pixelColumns(d.step, d[by], d.layers, pw, dom, by) };
  }
  heatScale = fitScale(
    (function* () {
      for (const f of heatFigures) {
        if (!f.cells) continue;
        const { vals, has } = f.cells, L = f.data.layers;
        for (let k = 0; k < vals.length; k++) if (has[Math.floor(k / L)]) yield vals[k];
      }
    })(),
  );
  // The top of the scale, for a reader (and a test) to see that a spike survived.
  if (legendCanvas && heatScale) legendCanvas.dataset.top = String(heatScale.hi);
  heatFigures.forEach(drawHeat);
  drawLegend();
}

heatBy?.addEventListener("change", () => {
  exportLinks();
  paintHeatmaps();
});

function drawHeat(f) {
  const { ctx, w, h } = fit(f.canvas);
  const t = theme();
  ctx.font = "10px system-ui, sans-serif";
  const d = f.data;
  if (!d || !d.step.length || !heatScale || !f.cells) {
    ctx.fillStyle = t.muted;
    ctx.textAlign = "center";
    ctx.fillText("no data", w / 2, h / 2);
    f.canvas.dataset.drawn = "0";
    return;
  }
  const pw = w - HM.l - HM.r, ph = h - HM.t - HM.b;
  const L = d.layers;
  const { vals, has, dom } = f.cells;
  const [x0, x1] = dom;
  const px = (s) => HM.l + ((s - x0) / (x1 - x0)) * pw;
  const rowH = ph / L;
  // A pixel column without a bucket stays empty, as on the run page and in the PNG.
  ctx.fillStyle = t.grid;
  ctx.fillRect(HM.l, HM.t, pw, ph);
  for (let x = 0; x < f.cells.pw; x++) {
    if (!has[x]) continue;
    for (let l = 0; l < L; l++) {
      const [r, g, bl] = colorOf(heatScale, vals[x * L + l]);
      ctx.fillStyle = `rgb(${r},${g},${bl})`;
      ctx.fillRect(HM.l + x, HM.t + ph - (l + 1) * rowH, 1.5, rowH + 0.5);
    }
  }
  ctx.fillStyle = t.muted;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText("0", HM.l - 4, HM.t + ph - rowH / 2);
  ctx.fillText(String(L - 1), HM.l - 4, HM.t + rowH / 2);
  ctx.textBaseline = "top";
  ctx.textAlign = "center";
  for (const s of ticks(x0, x1, Math.max(2, Math.floor(pw / 80)))) {
    const label = short(s);
    const half = ctx.measureText(label).width / 2;
    // Labels that would run off the canvas are left out rather than cut.
    if (s >= x0 && s <= x1 && px(s) + half <= w && px(s) - half >= 0) ctx.fillText(label, px(s), HM.t + ph + 4);
  }
  f.canvas.dataset.drawn = String(d.step.length);
}

function drawLegend() {
  const { ctx, w } = fit(legendCanvas);
  const t = theme();
  if (!heatScale) return;
  ctx.font = "11px system-ui, sans-serif";
  const l = 60, r = 60, bh = 10;
  const bw = w - l - r;
  for (let x = 0; x < bw; x++) {
    const [cr, cg, cb] = colorAt(x / Math.max(1, bw - 1));
    ctx.fillStyle = `rgb(${cr},${cg},${cb})`;
    ctx.fillRect(l + x, 2, 1, bh);
  }
  ctx.fillStyle = t.muted;
  ctx.textBaseline = "top";
  ctx.textAlign = "right";
  ctx.fillText(metric(heatScale.lo), l - 6, 1);
  ctx.textAlign = "left";
  ctx.fillText(metric(heatScale.hi), l + bw + 6, 1);
  ctx.textAlign = "center";
  ctx.fillText(`${heatScale.log ? "log scale" : "linear"} · middle ${metric(valueAt(heatScale, 0.5))}`, l + bw / 2, bh + 5);
}

// --- Live --------------------------------------------------------------------------------

async function refresh() {
  const details = await Promise.all(runs.map((r) => getJSON(`/api/v1/runs/${r.id}`)));
  details.forEach((d, i) => {
    Object.assign(runs[i], { status: d.status, last_step: d.last_step, scalars: d.scalars, layer_stats: d.layer_stats });
    const tr = document.querySelector(`.compare-runs tr[data-run="${d.id}"]`);
    if (!tr) return;
    const st = tr.querySelector('[data-field="status"]');
    st.textContent = st.dataset.status = d.status;
    tr.querySelector('[data-field="step"]').textContent = count(d.last_step);
    if (d.last_loss != null) tr.querySelector('[data-field="loss"]').textContent = metric(num(d.last_loss));
  });
  syncStepInput();
  await Promise.all([loadLosses(), profile.follow ? loadProfile() : null, loadHeatmaps()]);
}

const going = () => runs.some((r) => r.status === "running" || r.status === "paused");

async function start() {
  syncStepInput();
  exportLinks();
  await Promise.all([loadLosses(), loadProfile(), loadHeatmaps()]);
  connState(going() ? "live" : "closed");
  root.dataset.ready = "1";
  setInterval(() => {
    if (!going()) return;
    refresh()
      .then(() => connState(going() ? "live" : "closed"))
      .catch((e) => {
        connState("reconnecting");
        report(e);
      });
  }, 5000);
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    lossCharts.forEach((c) => c.chart.draw());
    if (depthCanvas) drawProfile();
    if (heatFigures.length) paintHeatmaps();
  }, 150);
});

start().catch(report);
