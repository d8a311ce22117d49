// The heatmap colour scale. The same stops and the same interpolation as
// server/src/charts/colormap.rs, so a rendered PNG and this page show one scale;
// tests check that the two agree. Viridis, with reds and pinks left for non-finite values.

export const STOPS = [
  [68, 1, 84],
  [72, 40, 120],
  [62, 73, 137],
  [49, 104, 142],
  [38, 130, 142],
  [31, 158, 137],
  [53, 183, 121],
  [110, 206, 88],
  [253, 231, 37],
];

export const NAN = [255, 0, 200];
export const INF = [230, 30, 30];

// The colour at t in [0, 1] (clamped): linear in RGB between neighbouring stops, rounded.
export function colorAt(t) {
  t = Number.isNaN(t) ? 0 : Math.min(1, Math.max(0, t));
  const pos = t * (STOPS.length - 1);
  const i = Math.min(Math.floor(pos), STOPS.length - 2);
  const f = pos - i;
  const a = STOPS[i], b = STOPS[i + 1];
  return [0, 1, 2].map((k) => Math.round(a[k] + (b[k] - a[k]) * f));
}

// Logarithmic when every finite value is above zero, linear otherwise; null without data.
export function fitScale(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) {
    if (Number.isFinite(v)) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  if (lo > hi) return null;
  return { lo, hi, log: lo > 0 };
}

export function position(scale, v) {
  let a = scale.lo, b = scale.hi, x = v;
  if (scale.log) {
    a = Math.log(scale.lo);
    b = Math.log(scale.hi);
    x = Math.log(Math.max(v, scale.lo));
  }
  return b > a ? Math.min(1, Math.max(0, (x - a) / (b - a))) : 0.5;
}

export function colorOf(scale, v) {
  if (Number.isNaN(v)) return NAN;
  if (!Number.isFinite(v)) return INF;
  return colorAt(position(scale, v));
}

export function valueAt(scale, t) {
  if (scale.log) {
    return Math.exp(Math.log(scale.lo) + (Math.log(scale.hi) - Math.log(scale.lo)) * t);
  }
  return scale.lo + (scale.hi - scale.lo) * t;
}
