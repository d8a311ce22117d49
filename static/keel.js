// Shared helpers of the pages: metric decoding, number formatting (the rules of
// server/src/views/format.rs), canvases sized to their box, and the live connection badge.

// Metrics travel as numbers or as the strings "NaN", "Infinity", "-Infinity".
export function num(v) {
  if (typeof v === "number") return v;
  if (v === "NaN") return NaN;
  if (v === "Infinity") return Infinity;
  if (v === "-Infinity") return -Infinity;
  return v == null ? null : Number(v);
}

export function metric(v) {
  if (v == null) return "—";
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "-∞";
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a < 1e-3 || a >= 1e5) return v.toExponential(2).replace("e+", "e");
  const decimals = Math.min(6, Math.max(0, 3 - Math.floor(Math.log10(a))));
  return v.toFixed(decimals);
}

export function count(v) {
  return v == null ? "—" : Math.round(v).toLocaleString("en-US");
}

export function tokens(v) {
  if (v == null) return "—";
  if (v < 1e3) return String(v);
  if (v < 1e6) return (v / 1e3).toFixed(1) + "k";
  if (v < 1e9) return (v / 1e6).toFixed(2) + "M";
  if (v < 1e12) return (v / 1e9).toFixed(2) + "B";
  return (v / 1e12).toFixed(1) + "T";
}

export function age(now, then) {
  const s = Math.max(0, now - then);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

// Axis labels: short, with k/M suffixes.
export function short(v) {
  if (Number.isNaN(v)) return "NaN";
  if (!Number.isFinite(v)) return v > 0 ? "∞" : "-∞";
  const a = Math.abs(v);
  const trim = (s) => (s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s);
  if (a === 0) return "0";
  if (a >= 1e9) return (v / 1e9).toFixed(3) + "G";
  if (a >= 1e6) return trim((v / 1e6).toFixed(2)) + "M";
  if (a >= 1e4) return trim((v / 1e3).toFixed(1)) + "k";
  if (a >= 1e-3) return trim(v.toFixed(Math.max(0, 3 - Math.floor(Math.log10(a)))));
  return v.toExponential(1).replace("e+", "e");
}

// About n round values in [lo, hi], 1, 2 or 5 times a power of ten apart.
export function ticks(lo, hi, n) {
  if (!(hi > lo) || !Number.isFinite(lo) || !Number.isFinite(hi)) return [lo];
  const raw = (hi - lo) / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out = [];
  for (let i = Math.ceil(lo / step); i <= Math.floor(hi / step); i++) out.push(i * step);
  return out;
}

// Round values for a log axis in [lo, hi]: 1, 2 and 5 times powers of ten over a range of
// a few decades, powers of ten alone over more; the ends when fewer than two fit.
export function logTicks(lo, hi) {
  const e0 = Math.floor(Math.log10(lo)), e1 = Math.ceil(Math.log10(hi));
  const mult = e1 - e0 <= 3 ? [1, 2, 5] : [1];
  const out = [];
  for (let e = e0; e <= e1; e++) {
    for (const m of mult) {
      const v = m * 10 ** e;
      if (v >= lo && v <= hi) out.push(v);
    }
  }
  return out.length >= 2 ? out : [lo, hi];
}

export async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

// The page's colours, from CSS (they follow prefers-color-scheme).
export function theme() {
  const css = getComputedStyle(document.documentElement);
  const v = (name) => css.getPropertyValue(name).trim();
  return {
    fg: v("--fg"), muted: v("--muted"), grid: v("--grid"), panel: v("--panel"),
    line: v("--line"), band: v("--band"), bad: v("--bad"), warn: v("--warn"),
    info: v("--info"), ok: v("--ok"), series: v("--series").split(",").map((s) => s.trim()),
  };
}

// Sizes a canvas's backing store to its CSS box (sharp on high-DPI screens) and returns the
// context scaled to CSS pixels with the box's size.
export function fit(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.floor(canvas.clientWidth));
  const h = Math.max(1, Math.floor(canvas.clientHeight));
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { ctx, w, h };
}

// Shows the state of a live connection in the header badge.
export function connState(state) {
  const el = document.getElementById("conn");
  if (el) {
    el.dataset.state = state;
    el.title = `live updates: ${state}`;
  }
}

// Runs fn at most once per ms, trailing: calls in between fold into one.
export function throttle(fn, ms) {
  let timer = null, last = 0;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      fn();
    }, wait);
  };
}
