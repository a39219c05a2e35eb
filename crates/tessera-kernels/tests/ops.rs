//! Norms, SiLU gating, RoPE and argmax against plain f64 references.

mod common;

use common::{rng, uniform};
use tessera_kernels::{
    add_rms_norm, argmax, rms_norm, rope, silu_mul, CpuPool, Isa, KernelError, RopeTable,
};

fn assert_close(got: &[f32], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(1.0);
        assert!((f64::from(g) - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

fn rms_norm_f64(x: &[f32], weight: &[f32], eps: f32) -> Vec<f64> {
    let dim = weight.len();
    x.chunks(dim)
        .flat_map(|row| {
            let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / dim as f64;
            let inv = 1.0 / (ms + f64::from(eps)).sqrt();
            row.iter()
                .zip(weight)
                .map(move |(&v, &g)| f64::from(v) * inv * f64::from(g))
        })
        .collect()
}

#[test]
fn rms_norm_matches_f64_reference() {
    let mut r = rng(10);
    for dim in [1, 7, 16, 576, 1000] {
        let x: Vec<f32> = uniform(&mut r, 3 * dim).iter().map(|v| v * 4.0).collect();
        let weight = uniform(&mut r, dim);
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &weight, 1e-5, &mut out).unwrap();
        assert_close(&out, &rms_norm_f64(&x, &weight, 1e-5), 1e-5, "rms_norm");
    }
}

#[test]
fn add_rms_norm_updates_residual_then_normalises_it() {
    let mut r = rng(11);
    let dim = 96;
    let residual = uniform(&mut r, 5 * dim);
    let delta = uniform(&mut r, 5 * dim);
    let weight = uniform(&mut r, dim);
    let mut updated = residual.clone();
    let mut out = vec![0.0; residual.len()];
    add_rms_norm(&mut updated, &delta, &weight, 1e-6, &mut out).unwrap();
    let sum: Vec<f32> = residual.iter().zip(&delta).map(|(a, b)| a + b).collect();
    assert_eq!(updated, sum);
    assert_close(
        &out,
        &rms_norm_f64(&sum, &weight, 1e-6),
        1e-5,
        "add_rms_norm",
    );
}

#[test]
fn norm_rejects_rows_that_do_not_divide_the_input() {
    let mut out = vec![0.0; 10];
    let err = rms_norm(&[0.0; 10], &[1.0; 3], 1e-5, &mut out).unwrap_err();
    assert!(
        matches!(err, KernelError::Invalid { what: "weight", .. }),
        "{err}"
    );
}

#[test]
fn silu_mul_matches_f64_reference_with_the_same_bits_on_every_isa() {
    let mut r = rng(12);
    let mut gate: Vec<f32> = uniform(&mut r, 1000).iter().map(|v| v * 20.0).collect();
    gate.extend([-100.0, 100.0, 0.0, -0.0, 88.5, -88.5, 87.4, -87.4]);
    let up = uniform(&mut r, gate.len());
    let want: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(&g, &u)| {
            let g = f64::from(g);
            g / (1.0 + (-g).exp()) * f64::from(u)
        })
        .collect();
    let mut first: Option<Vec<f32>> = None;
    for isa in Isa::available() {
        let pool = CpuPool::with_isa(1, isa).unwrap();
        let mut got = gate.clone();
        silu_mul(&pool, &mut got, &up).unwrap();
        assert_close(&got, &want, 1e-6, "silu_mul");
        let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        match &first {
            None => first = Some(got),
            Some(f) => {
                let want_bits: Vec<u32> = f.iter().map(|v| v.to_bits()).collect();
                assert_eq!(bits, want_bits, "{isa:?} differs from the first ISA");
            }
        }
    }
}

#[test]
fn rope_matches_f64_rotate_half_reference() {
    let (heads, head_dim, max_pos) = (3, 64, 4096);
    let inv_freq = RopeTable::default_inv_freq(head_dim, 10000.0);
    let table = RopeTable::new(head_dim, max_pos, &inv_freq).unwrap();
    let mut r = rng(13);
    let positions = [0usize, 1, 17, 4095];
    let x = uniform(&mut r, positions.len() * heads * head_dim);
    let half = head_dim / 2;
    let mut want = vec![0.0f64; x.len()];
    for (row, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (row * heads + h) * head_dim;
            for i in 0..half {
                // The angle is formed in f32 as in Hugging Face, then rotated in f64.
                let angle = f64::from(pos as f32 * inv_freq[i]);
                let (x1, x2) = (f64::from(x[base + i]), f64::from(x[base + i + half]));
                want[base + i] = x1 * angle.cos() - x2 * angle.sin();
                want[base + i + half] = x2 * angle.cos() + x1 * angle.sin();
            }
        }
    }
    let mut got = x.clone();
    rope(&mut got, heads, head_dim, &positions, &table).unwrap();
    assert_close(&got, &want, 2e-6, "rope");
    let err = rope(
        &mut got[..heads * head_dim],
        heads,
        head_dim,
        &[4096],
        &table,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Invalid {
                what: "positions",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn argmax_takes_the_first_maximum_and_skips_nan() {
    assert_eq!(argmax(&[1.0, 3.0, 2.0, 3.0]), Some(1));
    assert_eq!(argmax(&[f32::NAN, -1.0, f32::NAN, -0.5]), Some(3));
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), Some(0));
    assert_eq!(argmax(&[f32::NAN]), None);
    assert_eq!(argmax(&[]), None);
    let mut r = rng(14);
    let x = uniform(&mut r, 49152);
    let want = (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b });
    assert_eq!(argmax(&x), Some(want));
}
