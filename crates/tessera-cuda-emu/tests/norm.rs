//! cuda/norm.cu on the CPU emulation against tessera_kernels' RMSNorm.

mod common;

use common::*;
use rand::Rng;
use tessera_cuda_emu::{kernels as k, launch};

const SHAPES: [(usize, usize); 4] = [(1, 576), (7, 4096), (33, 100), (3, 1)];

#[test]
fn rms_norm_matches_cpu_reference() {
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut rng = rng(seed as u64);
        for (rows, dim) in SHAPES {
            let x = randn(&mut rng, rows * dim, 2.0);
            let w: Vec<f32> = (0..dim)
                .map(|_| 1.0 + rng.random_range(-0.2..0.2))
                .collect();
            let (dx, dw, mut out) = (dev(&x, place), dev(&w, place), poisoned(rows * dim, place));
            let o = out.mut_ptr();
            launch([rows as u32, 1, 1], [row_threads(dim), 1, 1], || unsafe {
                k::rms_norm_f32(dx.ptr(), dw.ptr(), o, dim as i32, 1e-5)
            })
            .expect("launch");
            let mut want = vec![0.0; rows * dim];
            tessera_kernels::rms_norm(&x, &w, 1e-5, &mut want).expect("reference");
            assert_close(
                &format!("rms_norm {rows}x{dim}"),
                &out.to_vec(),
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn add_rms_norm_updates_residual_and_matches_cpu_reference() {
    for (seed, place) in PLACES.into_iter().enumerate() {
        let mut rng = rng(10 + seed as u64);
        for (rows, dim) in SHAPES {
            let x = randn(&mut rng, rows * dim, 2.0);
            let delta = randn(&mut rng, rows * dim, 1.0);
            let w: Vec<f32> = (0..dim)
                .map(|_| 1.0 + rng.random_range(-0.2..0.2))
                .collect();
            let (mut dx, dd, dw) = (dev(&x, place), dev(&delta, place), dev(&w, place));
            let mut out = poisoned(rows * dim, place);
            let (r, o) = (dx.mut_ptr(), out.mut_ptr());
            launch([rows as u32, 1, 1], [row_threads(dim), 1, 1], || unsafe {
                k::add_rms_norm_f32(r, dd.ptr(), dw.ptr(), o, dim as i32, 1e-5)
            })
            .expect("launch");
            let (mut res, mut want) = (x.clone(), vec![0.0; rows * dim]);
            tessera_kernels::add_rms_norm(&mut res, &delta, &w, 1e-5, &mut want)
                .expect("reference");
            assert_close("add_rms_norm residual", &dx.to_vec(), &res, 1e-6);
            assert_close("add_rms_norm out", &out.to_vec(), &want, 1e-5);
        }
    }
}

#[test]
fn add_sums_elementwise_over_partial_blocks() {
    for place in PLACES {
        let mut rng = rng(20);
        let n = 1000;
        let (x, delta) = (randn(&mut rng, n, 1.0), randn(&mut rng, n, 1.0));
        let (mut dx, dd) = (dev(&x, place), dev(&delta, place));
        let p = dx.mut_ptr();
        launch([blocks(n, 256), 1, 1], [256, 1, 1], || unsafe {
            k::add_f32(p, dd.ptr(), n as i64)
        })
        .expect("launch");
        let want: Vec<f32> = x.iter().zip(&delta).map(|(a, b)| a + b).collect();
        assert_eq!(dx.to_vec(), want);
    }
}
