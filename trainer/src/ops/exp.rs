//! `exp` for f32 in straight-line arithmetic, so loops over slices vectorise (the C library's
//! `expf` is a call per element, and the softmax and SwiGLU kernels spend much of their time in
//! it). Cephes' `expf`: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for
//! `e^r`, and `2^n` built in the exponent bits. Within 1 ulp of the exact value on
//! `[−86.5, 88.72]`; below that it returns 0 (`e^−86.5 ≈ 2.7e−38`, where normal floats end),
//! above it +∞, and NaN for NaN. f64 keeps the library's `exp`.

/// Round-to-nearest by addition: `1.5 · 2^23` pushes the fraction out of the mantissa, so the
/// integer `n` sits in the low bits of the sum.
const ROUND: f32 = 12_582_912.0;
const LO: f32 = -86.5;
const HI: f32 = 88.722_83;
/// ln 2 split so that `n · LN2_HI` is exact for the `n` in range.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

#[inline]
pub fn exp_f32(x: f32) -> f32 {
    // `clamp` keeps a NaN (where `max`/`min` would turn it into a bound).
    let xc = x.clamp(LO, HI);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^(n − 1) · 2: n reaches 128 at the top of the range, one past the largest exponent.
    let n_bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let pow = f32::from_bits(((n_bits + 126) as u32) << 23);
    let y = er * pow * 2.0;
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_one_ulp_of_the_exact_value_over_its_range() {
        let mut worst = 0f64;
        for i in 0..=2_000_000 {
            // The last step would round past HI, where f32 overflows.
            let x = (LO + (HI - LO) * i as f32 / 2_000_000.0).min(HI);
            let (got, exact) = (exp_f32(x) as f64, (x as f64).exp());
            // One ulp of a float near `exact`: 2^(exponent − 23).
            let ulp = 2f64.powi(exact.log2().floor() as i32 - 23);
            worst = worst.max((got - exact).abs() / ulp);
        }
        // Measured: 0.97 ulp at the worst of these 2M points.
        assert!(worst < 1.0, "worst error {worst} ulp");
    }

    #[test]
    fn exp_f32_handles_the_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
