//! The colour scale of every heatmap, in the browser and in rendered images alike.
//!
//! The stops are the viridis map (dark violet → yellow): perceptually even, readable on light
//! and dark pages, and free of reds and pinks, which are kept for the non-finite values that
//! must stand out. `static/colormap.js` holds the same stops and the same interpolation; the
//! tests check that the two agree, so a PNG and the live page show one scale.

/// Viridis at t = 0, 1/8, …, 1.
pub const STOPS: [[u8; 3]; 9] = [
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

/// A NaN cell: magenta, which no stop comes near.
pub const NAN: [u8; 3] = [255, 0, 200];
/// A +Infinity or −Infinity cell.
pub const INF: [u8; 3] = [230, 30, 30];

/// The colour at `t` in [0, 1] (clamped): linear in RGB between neighbouring stops, rounded.
pub fn color_at(t: f64) -> [u8; 3] {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let pos = t * (STOPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let mix = |k: usize| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// How values map to [0, 1]: logarithmic when every finite value is above zero (variances,
/// norms), linear otherwise. The browser fits its scale the same way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    pub lo: f64,
    pub hi: f64,
    pub log: bool,
}

impl Scale {
    /// The scale spanning the finite values; `None` when there are none.
    pub fn fit(values: impl IntoIterator<Item = f64>) -> Option<Scale> {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            return None;
        }
        Some(Scale {
            lo,
            hi,
            log: lo > 0.0,
        })
    }

    /// Where `v` falls, 0 at `lo` and 1 at `hi` (0.5 when the range is a single value).
    pub fn position(&self, v: f64) -> f64 {
        let (a, b, x) = if self.log {
            (self.lo.ln(), self.hi.ln(), v.max(self.lo).ln())
        } else {
            (self.lo, self.hi, v)
        };
        if b > a {
            ((x - a) / (b - a)).clamp(0.0, 1.0)
        } else {
            0.5
        }
    }

    /// The colour of a value, non-finite ones included.
    pub fn color(&self, v: f64) -> [u8; 3] {
        if v.is_nan() {
            NAN
        } else if v.is_infinite() {
            INF
        } else {
            color_at(self.position(v))
        }
    }

    /// The value at position `t` (for legend labels).
    pub fn value_at(&self, t: f64) -> f64 {
        if self.log {
            (self.lo.ln() + (self.hi.ln() - self.lo.ln()) * t).exp()
        } else {
            self.lo + (self.hi - self.lo) * t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[r, g, b]` triples of `const STOPS = [...]` in the browser's colormap.js.
    fn js_stops() -> Vec<[u8; 3]> {
        let js = include_str!("../../../static/colormap.js");
        let start = js.find("STOPS = [").expect("colormap.js defines STOPS") + 9;
        let end = start + js[start..].find("];").expect("STOPS ends with ];");
        let numbers: Vec<u8> = js[start..end]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        numbers.chunks(3).map(|c| [c[0], c[1], c[2]]).collect()
    }

    #[test]
    fn the_browser_and_the_images_use_the_same_stops() {
        assert_eq!(js_stops(), STOPS.to_vec());
    }

    #[test]
    fn the_ends_of_the_scale_are_the_first_and_last_stops() {
        assert_eq!(color_at(0.0), STOPS[0]);
        assert_eq!(color_at(1.0), STOPS[8]);
        assert_eq!(color_at(-3.0), STOPS[0]);
        assert_eq!(color_at(7.0), STOPS[8]);
        // Halfway between stop 0 (68, 1, 84) and stop 1 (72, 40, 120).
        assert_eq!(color_at(1.0 / 16.0), [70, 21, 102]);
    }

    #[test]
    fn positive_values_get_a_log_scale_and_non_finite_ones_their_own_colours() {
        let s = Scale::fit([1.0, 100.0, f64::NAN, f64::INFINITY]).unwrap();
        assert!(s.log);
        assert_eq!((s.lo, s.hi), (1.0, 100.0));
        assert!((s.position(10.0) - 0.5).abs() < 1e-12);
        assert_eq!(s.color(f64::NAN), NAN);
        assert_eq!(s.color(f64::NEG_INFINITY), INF);
        let lin = Scale::fit([-1.0, 1.0]).unwrap();
        assert!(!lin.log);
        assert_eq!(lin.position(0.0), 0.5);
        assert_eq!(Scale::fit([f64::NAN]), None);
    }
}
