//! The fused CPU kernels against the composed reference ops: same values, same gradients.
//!
//! Shapes come in two sizes: one block of rows (run on the calling thread) and several blocks
//! whose boundaries fall mid-sequence (run on rayon's pool), so a row's position `row mod t` is
//! checked across block boundaries. Gradients are taken of `Σ out ⊙ w` with random `w`, so the
//! incoming gradient is random too.

use candle_core::{DType, Device, Tensor, Var};
use keel_trainer::ops::{Attention, Kernels};
use keel_trainer::rng::Rng;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `max |a − b|` over `max |b|`, in f64.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let host = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (host(a), host(b));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Runs `op` with both kernels on `inputs` (as variables) and returns, per kernel, the output
/// and the gradient of `Σ out ⊙ w` with respect to each input.
fn both(inputs: &[Tensor], op: impl Fn(Kernels, &[Tensor]) -> Tensor) -> [Vec<Tensor>; 2] {
    [Kernels::Fused, Kernels::Composed].map(|k| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = op(k, &xs);
        let w = randn(out.dims(), 99).to_dtype(out.dtype()).unwrap();
        let grads = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let mut res = vec![out];
        res.extend(xs.iter().map(|x| grads.get(x).expect("a gradient").clone()));
        res
    })
}

/// Fused and composed agree on the output and every gradient to `tol` (relative to the largest).
fn assert_agree(
    what: &str,
    inputs: &[Tensor],
    tol: f64,
    op: impl Fn(Kernels, &[Tensor]) -> Tensor,
) {
    let [fused, composed] = both(inputs, op);
    for (i, (f, c)) in fused.iter().zip(&composed).enumerate() {
        let d = rel_diff(f, c);
        let name = if i == 0 {
            "output".to_string()
        } else {
            format!("gradient {i}")
        };
        assert!(d < tol, "{what}: {name} differs by {d:e} (relative)");
    }
}

/// Small (one block) and large (several blocks, boundaries mid-sequence) `[b, h, t, w]` shapes.
const SHAPES: [[usize; 4]; 3] = [[1, 2, 5, 8], [2, 3, 70, 32], [3, 2, 77, 36]];

#[test]
fn fused_rms_norm_matches_the_composed_one_with_its_gradients_in_f64() {
    for (i, s) in SHAPES.iter().enumerate() {
        let g = randn(&s[3..], 10 + i as u64).affine(0.3, 1.0).unwrap();
        let x = randn(s, i as u64);
        assert_agree("rms_norm", &[x, g], 1e-12, |k, v| {
            k.rms_norm(&v[0], &v[1], 1e-6).unwrap()
        });
    }
}

#[test]
fn fused_causal_softmax_matches_the_masked_composed_one_with_its_gradients_in_f64() {
    for (i, s) in SHAPES.iter().enumerate() {
        // Square score blocks `[b, h, t, t]`, logits of order 3 so the rows are far from uniform.
        let scores = (randn(&[s[0], s[1], s[2], s[2]], 20 + i as u64) * 3.0).unwrap();
        assert_agree("causal_softmax", &[scores], 1e-12, |k, v| {
            k.causal_softmax(&v[0], 0.125).unwrap()
        });
    }
}

#[test]
fn the_fused_softmax_gives_masked_entries_exactly_zero_and_rows_summing_to_one() {
    let scores = randn(&[2, 1, 70, 70], 3);
    let y = Kernels::Fused.causal_softmax(&scores, 0.5).unwrap();
    let rows: Vec<Vec<f64>> = y.reshape((140, 70)).unwrap().to_vec2().unwrap();
    for (r, row) in rows.iter().enumerate() {
        let i = r % 70;
        assert!(
            row[i + 1..].iter().all(|&v| v == 0.0),
            "row {r} leaks past {i}"
        );
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12, "row {r}");
    }
}

/// Scores `[s0, s1, t, t]` with large values above the diagonal, where the causal mask is:
/// reading one would show.
fn masked_garbage(s: &[usize], seed: u64) -> Tensor {
    let t = s[2];
    let above: Vec<f64> = (0..t * t)
        .map(|j| if j % t > j / t { 100.0 } else { 0.0 })
        .collect();
    let above = Tensor::from_vec(above, (t, t), &Device::Cpu).unwrap();
    randn(&[s[0], s[1], t, t], seed)
        .broadcast_add(&above)
        .unwrap()
}

#[test]
fn the_softmax_hands_back_the_logit_max_of_its_own_row_maxima_exactly() {
    for (i, s) in SHAPES.iter().enumerate() {
        let scores = masked_garbage(s, 50 + i as u64);
        let want = keel_trainer::ops::composed::causal_logit_max(&scores, 0.3)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        for k in [Kernels::Fused, Kernels::Composed] {
            let (probs, top) = k.attention_softmax(&scores, 0.3, None, true).unwrap();
            assert_eq!(
                top.unwrap().to_scalar::<f64>().unwrap(),
                want,
                "{k:?} {s:?}"
            );
            let plain = k.causal_softmax(&scores, 0.3).unwrap();
            assert_eq!(rel_diff(&probs, &plain), 0.0, "{k:?} {s:?}");
            let (_, none) = k.attention_softmax(&scores, 0.3, None, false).unwrap();
            assert!(none.is_none());
        }
    }
    // A NaN logit shows in the tap of both forms.
    let mut v = vec![0.5f64; 16];
    v[5] = f64::NAN;
    let x = Tensor::from_vec(v, (1, 1, 4, 4), &Device::Cpu).unwrap();
    for k in [Kernels::Fused, Kernels::Composed] {
        let (_, top) = k.attention_softmax(&x, 1.0, None, true).unwrap();
        assert!(top.unwrap().to_scalar::<f64>().unwrap().is_nan(), "{k:?}");
    }
}

#[test]
fn fused_attention_matches_the_composed_one_with_its_gradients_and_tap_in_f64_and_f32() {
    // [b, h, t, d] queries over [b, kvh, t, d] keys and values: plain, and grouped (3 query
    // heads per KV head), one row and several.
    let cases = [
        ([1, 2, 1, 8], 2),
        ([2, 2, 9, 8], 2),
        ([2, 6, 33, 16], 2),
        ([3, 2, 70, 32], 1),
    ];
    for (i, (q, kvh)) in cases.into_iter().enumerate() {
        let kv = [q[0], kvh, q[2], q[3]];
        let seed = 70 + 3 * i as u64;
        let inputs = [randn(&q, seed), randn(&kv, seed + 1), randn(&kv, seed + 2)];
        let attend = |k: Kernels, v: &[Tensor]| {
            k.causal_attention(Attention::Streaming, &v[0], &v[1], &v[2], 0.3, None, false)
                .unwrap()
                .0
        };
        assert_agree(&format!("attention {q:?}/{kvh}"), &inputs, 1e-12, attend);
        let low: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_dtype(DType::F32).unwrap())
            .collect();
        assert_agree(&format!("attention f32 {q:?}/{kvh}"), &low, 1e-5, attend);
        let [f, c] = [Kernels::Fused, Kernels::Composed].map(|k| {
            let (_, top) = k
                .causal_attention(
                    Attention::Streaming,
                    &inputs[0],
                    &inputs[1],
                    &inputs[2],
                    0.3,
                    None,
                    true,
                )
                .unwrap();
            top.unwrap().to_scalar::<f64>().unwrap()
        });
        assert!((f - c).abs() < 1e-12, "tap {f} vs {c}");
    }
    // A NaN in a key shows in the output and the tap.
    let mut k = vec![0.5f64; 2 * 3 * 4];
    k[5] = f64::NAN;
    let k = Tensor::from_vec(k, (1, 2, 3, 4), &Device::Cpu).unwrap();
    let q = randn(&[1, 2, 3, 4], 5);
    let (y, top) = Kernels::Fused
        .causal_attention(Attention::Streaming, &q, &k, &k, 1.0, None, true)
        .unwrap();
    assert!(top.unwrap().to_scalar::<f64>().unwrap().is_nan());
    let y: Vec<f64> = y.flatten_all().unwrap().to_vec1().unwrap();
    assert!(y.iter().any(|v| v.is_nan()));
}

#[test]
fn fused_rope_matches_the_composed_one_with_its_gradients_in_f64() {
    for (i, s) in SHAPES.iter().enumerate() {
        let (t, half) = (s[2], s[3] / 2);
        let angles = randn(&[1, 1, t, half], 40 + i as u64);
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let x = randn(s, 50 + i as u64);
        let [fused, composed] = both(&[x], |k, v| k.rope(&v[0], &cos, &sin).unwrap());
        for (f, c) in fused.iter().zip(&composed) {
            assert!(rel_diff(f, c) < 1e-12, "rope {s:?}: {:e}", rel_diff(f, c));
        }
    }
}

#[test]
fn fused_swiglu_matches_the_composed_one_with_its_gradients_in_f64() {
    for (i, s) in SHAPES.iter().enumerate() {
        let (g, u) = (
            (randn(s, 60 + i as u64) * 4.0).unwrap(),
            randn(s, 70 + i as u64),
        );
        assert_agree("swiglu", &[g, u], 1e-12, |k, v| {
            k.swiglu(&v[0], &v[1]).unwrap()
        });
    }
}

#[test]
fn the_fused_kernels_agree_in_f32_too() {
    let s = SHAPES[2];
    let f32_of = |t: Tensor| t.to_dtype(DType::F32).unwrap();
    let x = f32_of(randn(&s, 80));
    let g = f32_of(randn(&s[3..], 81));
    let scores = f32_of(randn(&[s[0], s[1], s[2], s[2]], 82));
    assert_agree("rms_norm f32", &[x.clone(), g], 1e-5, |k, v| {
        k.rms_norm(&v[0], &v[1], 1e-6).unwrap()
    });
    assert_agree("causal_softmax f32", &[scores], 1e-5, |k, v| {
        k.causal_softmax(&v[0], 0.2).unwrap()
    });
    assert_agree("swiglu f32", &[x.clone(), x], 1e-5, |k, v| {
        k.swiglu(&v[0], &v[1]).unwrap()
    });
}

#[test]
fn strided_inputs_are_taken_as_their_values() {
    // Transposed views: the wrappers copy them to contiguous memory first, and the gradients
    // flow back through the transpose.
    let (x, g) = (randn(&[2, 3, 8, 6], 90), randn(&[8], 91));
    assert_agree("rms_norm strided", &[x, g], 1e-12, |k, v| {
        let xt = v[0].transpose(2, 3).unwrap();
        assert!(!xt.is_contiguous());
        k.rms_norm(&xt, &v[1], 1e-6).unwrap()
    });
    let scores = randn(&[2, 3, 9, 9], 92);
    assert_agree("causal_softmax strided", &[scores], 1e-12, |k, v| {
        k.causal_softmax(&v[0].transpose(2, 3).unwrap(), 0.5)
            .unwrap()
    });
}

#[test]
fn a_nan_input_gives_nan_outputs_not_a_panic() {
    let mut v = vec![0.5f64; 2 * 4 * 4];
    v[5] = f64::NAN; // row 1 of the first 4 × 4 block, an unmasked column
    let x = Tensor::from_vec(v, (2, 4, 4), &Device::Cpu).unwrap();
    let k = Kernels::Fused;
    let row_nan = |t: &Tensor| -> Vec<bool> {
        let rows: Vec<Vec<f64>> = t.reshape((8, 4)).unwrap().to_vec2().unwrap();
        rows.iter().map(|r| r.iter().any(|v| v.is_nan())).collect()
    };
    let g = Tensor::ones(4, DType::F64, &Device::Cpu).unwrap();
    assert!(row_nan(&k.rms_norm(&x, &g, 1e-6).unwrap())[1]);
    let y = k.causal_softmax(&x, 1.0).unwrap();
    assert_eq!(row_nan(&y)[..3], [false, true, false]);
    let (_, top) = k.attention_softmax(&x, 1.0, None, true).unwrap();
    assert!(top.unwrap().to_scalar::<f64>().unwrap().is_nan());
    assert!(row_nan(&k.swiglu(&x, &x).unwrap())[1]);
    let table = Tensor::ones((4, 2), DType::F64, &Device::Cpu).unwrap();
    assert!(row_nan(&k.rope(&x, &table, &table).unwrap())[1]);
}
