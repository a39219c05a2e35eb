//! Attention against a naive f64 reference, and its independence of t and threads.

mod common;

use common::{bits, pools, rng, uniform};
use tessera_kernels::{attention, AttentionShape, CpuPool, KernelError};

/// Naive causal attention in f64 (same shapes and window rule as the kernel).
fn attention_f64(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape<'_>) -> Vec<f64> {
    let (d, hq, hkv) = (shape.head_dim, shape.kv_index.len(), shape.kv_heads);
    let mut out = vec![0.0; q.len()];
    for r in 0..shape.tokens {
        let pos = shape.start + r;
        let lo = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in 0..hq {
            let g = shape.kv_index[h];
            let qr = &q[(r * hq + h) * d..][..d];
            let scores: Vec<f64> = (lo..=pos)
                .map(|j| {
                    let kr = &k[(j * hkv + g) * d..][..d];
                    qr.iter()
                        .zip(kr)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for (jj, j) in (lo..=pos).enumerate() {
                let vr = &v[(j * hkv + g) * d..][..d];
                for i in 0..d {
                    out[(r * hq + h) * d + i] += e[jj] / z * f64::from(vr[i]);
                }
            }
        }
    }
    out
}

fn run(pool: &CpuPool, q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape<'_>) -> Vec<f32> {
    let mut out = vec![f32::NAN; q.len()];
    attention(pool, q, k, v, shape, &mut out).unwrap();
    out
}

struct Case {
    tokens: usize,
    start: usize,
    head_dim: usize,
    kv_heads: usize,
    kv_index: Vec<usize>,
    window: Option<usize>,
    cache_rows: usize,
}

fn cases() -> Vec<Case> {
    let case = |tokens, start, head_dim, kv_heads, kv_index: &[usize], window, extra| Case {
        tokens,
        start,
        head_dim,
        kv_heads,
        kv_index: kv_index.to_vec(),
        window,
        cache_rows: start + tokens + extra,
    };
    vec![
        case(1, 0, 64, 1, &[0], None, 0),
        case(7, 0, 64, 3, &[0, 0, 0, 1, 1, 1, 2, 2, 2], None, 0),
        case(1, 40, 64, 3, &[0, 0, 0, 1, 1, 1, 2, 2, 2], None, 5),
        case(5, 20, 32, 2, &[1, 0, 1, 0], None, 0),
        case(9, 30, 24, 2, &[0, 1], Some(8), 3),
        case(1, 99, 64, 1, &[0, 0], Some(1), 0),
        case(33, 0, 20, 2, &[0, 0, 1, 1], Some(16), 0),
    ]
}

#[test]
fn attention_matches_f64_reference_with_gqa_windows_and_offsets() {
    for (n, c) in cases().into_iter().enumerate() {
        let mut r = rng(20 + n as u64);
        let row = c.kv_heads * c.head_dim;
        let q: Vec<f32> = uniform(&mut r, c.tokens * c.kv_index.len() * c.head_dim)
            .iter()
            .map(|x| x * 3.0)
            .collect();
        let k = uniform(&mut r, c.cache_rows * row);
        let v = uniform(&mut r, c.cache_rows * row);
        let shape = AttentionShape {
            tokens: c.tokens,
            start: c.start,
            head_dim: c.head_dim,
            kv_heads: c.kv_heads,
            kv_index: &c.kv_index,
            window: c.window,
        };
        let want = attention_f64(&q, &k, &v, &shape);
        for pool in pools(&[1, 2, 3]) {
            let got = run(&pool, &q, &k, &v, &shape);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(g) - w).abs() <= 1e-4 * w.abs().max(1e-2),
                    "case {n} {pool:?} out[{i}]: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn prefill_rows_are_bit_identical_to_one_by_one_decode() {
    let (t, d, hkv) = (40, 64, 2);
    let kv_index = [0, 0, 1, 1, 0];
    let hq = kv_index.len();
    let mut r = rng(30);
    let q = uniform(&mut r, t * hq * d);
    let k = uniform(&mut r, t * hkv * d);
    let v = uniform(&mut r, t * hkv * d);
    for window in [None, Some(13)] {
        let shape = |tokens, start| AttentionShape {
            tokens,
            start,
            head_dim: d,
            kv_heads: hkv,
            kv_index: &kv_index,
            window,
        };
        let one = CpuPool::new(1).unwrap();
        let prefill = bits(&run(&one, &q, &k, &v, &shape(t, 0)));
        for pool in pools(&[1, 2, 3]) {
            // Decode: one token at a time over a cache holding exactly the past.
            for pos in 0..t {
                let rows = (pos + 1) * hkv * d;
                let q_row = &q[pos * hq * d..(pos + 1) * hq * d];
                let got = run(&pool, q_row, &k[..rows], &v[..rows], &shape(1, pos));
                assert_eq!(
                    bits(&got),
                    prefill[pos * hq * d..(pos + 1) * hq * d],
                    "{pool:?} {window:?} pos {pos}"
                );
            }
            // Chunked prefill: 16 + 24 tokens.
            let first = run(&pool, &q[..16 * hq * d], &k, &v, &shape(16, 0));
            let second = run(&pool, &q[16 * hq * d..], &k, &v, &shape(24, 16));
            assert_eq!(
                bits(&[first, second].concat()),
                prefill,
                "{pool:?} {window:?} chunked"
            );
        }
    }
}

#[test]
fn attention_rejects_bad_shapes() {
    let pool = CpuPool::new(1).unwrap();
    let shape = AttentionShape {
        tokens: 2,
        start: 3,
        head_dim: 4,
        kv_heads: 1,
        kv_index: &[0, 1],
        window: None,
    };
    let (q, kv) = (vec![0.0; 16], vec![0.0; 20]);
    let mut out = vec![0.0; 16];
    let err = attention(&pool, &q, &kv, &kv, &shape, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Invalid {
                what: "kv_index",
                ..
            }
        ),
        "{err}"
    );
    let shape = AttentionShape {
        kv_index: &[0, 0],
        ..shape
    };
    let err = attention(&pool, &q, &kv[..16], &kv[..16], &shape, &mut out).unwrap_err();
    assert!(
        matches!(err, KernelError::Invalid { what: "k", .. }),
        "{err}"
    );
    let shape = AttentionShape {
        window: Some(0),
        ..shape
    };
    let err = attention(&pool, &q, &kv, &kv, &shape, &mut out).unwrap_err();
    assert!(
        matches!(err, KernelError::Invalid { what: "window", .. }),
        "{err}"
    );
}
