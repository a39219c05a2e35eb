//! cuda/sampling.cu on the CPU emulation: argmax against `tessera_kernels::argmax`, the
//! sampler against the CPU rule of `tessera_cuda::reference` (1024-thread blocks, as
//! launched).

mod common;

use common::*;
use tessera_cuda::ops::SampleParams;
use tessera_cuda::reference::sample_accepts;
use tessera_cuda_emu::{kernels as k, launch, DevBuf};

#[test]
fn argmax_takes_the_first_maximum_and_skips_nan() {
    let (rows, vocab) = (5, 49_157);
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut logits = randn(&mut rng(200 + seed as u64), rows * vocab, 10.0);
        logits[5] = f32::NAN;
        logits[vocab + 17] = 1e4;
        logits[vocab + 40_000] = 1e4;
        logits[3 * vocab + vocab - 1] = 1e5;
        for v in &mut logits[4 * vocab..] {
            *v = f32::NAN;
        }
        let dl = dev(&logits, place);
        let mut out = DevBuf::filled(rows, -7i32, place).expect("memory");
        let o = out.mut_ptr();
        launch([rows as u32, 1, 1], [1024, 1, 1], || unsafe {
            k::argmax_f32(dl.ptr(), vocab as i32, o)
        })
        .expect("launch");
        let want: Vec<i32> = logits
            .chunks_exact(vocab)
            .map(|r| tessera_kernels::argmax(r).map_or(-1, |i| i as i32))
            .collect();
        assert_eq!(out.to_vec(), want);
        assert_eq!(want[1], (vocab + 17 - vocab) as i32);
        assert_eq!(want[4], -1);
    }
}

/// The sampling cases of the GPU op check.
pub const PARAMS: [SampleParams; 4] = [
    SampleParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    },
    SampleParams {
        temperature: 0.7,
        top_k: 50,
        top_p: 1.0,
    },
    SampleParams {
        temperature: 0.9,
        top_k: 0,
        top_p: 0.9,
    },
    SampleParams {
        temperature: 1.3,
        top_k: 200,
        top_p: 0.8,
    },
];

#[test]
fn sample_draws_within_the_cpu_rule() {
    let (rows, vocab) = (4, 3001);
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut rng = rng(210 + seed as u64);
        for p in PARAMS {
            let logits = randn(&mut rng, rows * vocab, 8.0);
            let uniforms: Vec<f32> = randn(&mut rng, rows, 0.5).iter().map(|u| u + 0.5).collect();
            let (dl, du) = (dev(&logits, place), dev(&uniforms, place));
            let mut out = DevBuf::filled(rows, -7i32, place).expect("memory");
            let o = out.mut_ptr();
            launch([rows as u32, 1, 1], [1024, 1, 1], || unsafe {
                k::sample_f32(
                    dl.ptr(),
                    vocab as i32,
                    p.temperature,
                    p.top_k as i32,
                    p.top_p,
                    du.ptr(),
                    o,
                )
            })
            .expect("launch");
            for ((row, &u), &g) in logits.chunks_exact(vocab).zip(&uniforms).zip(&out.to_vec()) {
                assert!(
                    g >= 0 && sample_accepts(row, p, u, g as usize, 1e-3),
                    "{p:?} u {u}: drew {g}"
                );
            }
        }
    }
}

#[test]
fn a_mixed_batch_samples_each_row_with_its_own_parameters() {
    let vocab = 2999;
    // Greedy rows (temperature 0) between sampled rows of different parameters.
    let rows: Vec<SampleParams> = vec![
        SampleParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        },
        PARAMS[1],
        PARAMS[3],
        SampleParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.5,
        },
        PARAMS[2],
        SampleParams {
            temperature: 0.6,
            top_k: 1,
            top_p: 1.0,
        },
    ];
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut rng = rng(220 + seed as u64);
        let mut logits = randn(&mut rng, rows.len() * vocab, 8.0);
        logits[3 * vocab + 11] = 50.0;
        logits[3 * vocab + 12] = 50.0;
        let uniforms: Vec<f32> = randn(&mut rng, rows.len(), 0.5)
            .iter()
            .map(|u| u + 0.5)
            .collect();
        let temps: Vec<f32> = rows.iter().map(|p| p.temperature).collect();
        let ks: Vec<i32> = rows.iter().map(|p| p.top_k as i32).collect();
        let ps: Vec<f32> = rows.iter().map(|p| p.top_p).collect();
        let (dl, du) = (dev(&logits, place), dev(&uniforms, place));
        let (dt, dk, dp) = (dev(&temps, place), dev(&ks, place), dev(&ps, place));
        let mut out = DevBuf::filled(rows.len(), -7i32, place).expect("memory");
        let o = out.mut_ptr();
        launch([rows.len() as u32, 1, 1], [1024, 1, 1], || unsafe {
            k::sample_rows_f32(
                dl.ptr(),
                vocab as i32,
                dt.ptr(),
                dk.ptr(),
                dp.ptr(),
                du.ptr(),
                o,
            )
        })
        .expect("launch");
        let got = out.to_vec();
        for (r, p) in rows.iter().enumerate() {
            let row = &logits[r * vocab..][..vocab];
            if p.temperature <= 0.0 {
                let want = tessera_kernels::argmax(row).map_or(-1, |i| i as i32);
                assert_eq!(got[r], want, "greedy row {r}");
            } else {
                let ok = got[r] >= 0 && sample_accepts(row, *p, uniforms[r], got[r] as usize, 1e-3);
                assert!(ok, "row {r} {p:?} u {}: drew {}", uniforms[r], got[r]);
            }
        }
        assert_eq!(got[3], 11, "a greedy tie goes to the first index");
        assert_eq!(
            got[5],
            tessera_kernels::argmax(&logits[5 * vocab..][..vocab]).map_or(-1, |i| i as i32)
        );
    }
}

#[test]
fn top_p_is_a_share_of_what_top_k_kept() {
    // Nearly flat logits: the 50 largest hold a small part of the whole mass, so top_p
    // 0.5 of the whole would keep all 50, while half of what top_k kept is about 25.
    let (rows, vocab) = (8, 3001);
    let p = SampleParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.5,
    };
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut rng = rng(230 + seed as u64);
        let logits = randn(&mut rng, rows * vocab, 0.1);
        let uniforms: Vec<f32> = (0..rows).map(|r| (r as f32 + 0.5) / rows as f32).collect();
        let (dl, du) = (dev(&logits, place), dev(&uniforms, place));
        let mut out = DevBuf::filled(rows, -7i32, place).expect("memory");
        let o = out.mut_ptr();
        launch([rows as u32, 1, 1], [1024, 1, 1], || unsafe {
            k::sample_f32(
                dl.ptr(),
                vocab as i32,
                p.temperature,
                p.top_k as i32,
                p.top_p,
                du.ptr(),
                o,
            )
        })
        .expect("launch");
        for ((row, &u), &g) in logits.chunks_exact(vocab).zip(&uniforms).zip(&out.to_vec()) {
            assert!(
                g >= 0 && sample_accepts(row, p, u, g as usize, 1e-3),
                "u {u}: drew {g}"
            );
        }
    }
}
