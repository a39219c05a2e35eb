//! Kernel rates: GEMV GB/s (weight bytes / time, cold weights) and GEMM GFLOP/s, with 2
//! threads, on AVX-512 (when present) and forced AVX2. Prints one JSON object per line
//! (the minimum time of several calls; the machine may be shared).
//!
//! `cargo run --release -p tessera-kernels --example kernel_rates`
//! (benches/results/kernels-2026-12-04.json was made with this driver; its "before" rows
//! built it against 70a99da with the packed rows left out.)
use half::bf16;
use std::time::Instant;
use tessera_kernels::*;

const COLD: usize = 192 << 20;

/// Deterministic values in [-0.5, 0.5).
fn filled(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0
                - 0.5
        })
        .collect()
}

/// The fastest of `reps` calls of `f` (after one warm-up call).
fn min_time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// Prints one measurement as a JSON line.
#[allow(clippy::too_many_arguments)]
fn emit(
    version: &str,
    isa: Isa,
    t: usize,
    kind: &str,
    what: &str,
    shape: &str,
    value: f64,
    unit: &str,
    secs: f64,
) {
    println!("{{\"version\":\"{version}\",\"isa\":\"{isa:?}\",\"threads\":{t},\"kind\":\"{kind}\",\"weights\":\"{what}\",\"shape\":\"{shape}\",\"value\":{value:.3},\"unit\":\"{unit}\",\"min_seconds\":{secs:.6}}}");
}

fn main() {
    let version = "after";
    let threads = 2;
    let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    for isa in isas {
        let pool = CpuPool::with_isa(threads, isa).unwrap();
        for (n, k) in [(49152usize, 576usize), (1536, 576)] {
            let x = filled(k, 99);
            let mut y = vec![0.0f32; n];
            let shape = format!("{n}x{k}");
            let copies = COLD.div_ceil(n * k * 4).max(1);
            let ws: Vec<Vec<f32>> = (0..copies).map(|s| filled(n * k, s as u32)).collect();
            let wb: Vec<Vec<bf16>> = ws
                .iter()
                .map(|w| w.iter().map(|&v| bf16::from_f32(v)).collect())
                .collect();
            let mut i = 0;
            let s = min_time(20, || {
                matmul(
                    &pool,
                    &x,
                    1,
                    k,
                    WeightRef::F32(&ws[i % copies]),
                    n,
                    None,
                    &mut y,
                )
                .unwrap();
                i += 1;
            });
            emit(
                version,
                isa,
                threads,
                "gemv_rowmajor",
                "f32",
                &shape,
                (n * k * 4) as f64 / s / 1e9,
                "GB/s",
                s,
            );
            let s = min_time(20, || {
                matmul(
                    &pool,
                    &x,
                    1,
                    k,
                    WeightRef::Bf16(&wb[i % copies]),
                    n,
                    None,
                    &mut y,
                )
                .unwrap();
                i += 1;
            });
            emit(
                version,
                isa,
                threads,
                "gemv_rowmajor",
                "bf16",
                &shape,
                (n * k * 2) as f64 / s / 1e9,
                "GB/s",
                s,
            );
            {
                let pf: Vec<PackedMatrix> = ws
                    .iter()
                    .map(|w| PackedMatrix::pack_f32(w, n, k).unwrap())
                    .collect();
                let s = min_time(20, || {
                    matmul_packed(&pool, &x, 1, &pf[i % copies], None, &mut y).unwrap();
                    i += 1;
                });
                emit(
                    version,
                    isa,
                    threads,
                    "gemv_packed",
                    "f32",
                    &shape,
                    pf[0].storage_bytes() as f64 / s / 1e9,
                    "GB/s",
                    s,
                );
                drop(pf);
                let pb: Vec<PackedMatrix> = wb
                    .iter()
                    .map(|w| PackedMatrix::pack_bf16(w, n, k).unwrap())
                    .collect();
                let s = min_time(20, || {
                    matmul_packed(&pool, &x, 1, &pb[i % copies], None, &mut y).unwrap();
                    i += 1;
                });
                emit(
                    version,
                    isa,
                    threads,
                    "gemv_packed",
                    "bf16",
                    &shape,
                    pb[0].storage_bytes() as f64 / s / 1e9,
                    "GB/s",
                    s,
                );
                drop(pb);
                let pq: Vec<PackedMatrix> = ws
                    .iter()
                    .map(|w| {
                        PackedMatrix::pack_blocks(
                            &BlockTensor::quantize(BlockFormat::Q4_1, w, n, k).unwrap(),
                        )
                    })
                    .collect();
                let s = min_time(20, || {
                    matmul_packed(&pool, &x, 1, &pq[i % copies], None, &mut y).unwrap();
                    i += 1;
                });
                // Bytes of the GGUF blocks (20 per 32 values), what a GEMV must stream.
                emit(
                    version,
                    isa,
                    threads,
                    "gemv_packed",
                    "q4_1",
                    &shape,
                    (n * k / 32 * 20) as f64 / s / 1e9,
                    "GB/s",
                    s,
                );
            }
        }
        let (k, n) = (576usize, 1536usize);
        let w = filled(n * k, 7);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        for m in [64usize, 512] {
            let x = filled(m * k, 3);
            let mut y = vec![0.0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            let shape = format!("m{m}_k{k}_n{n}");
            let reps = if m == 64 { 20 } else { 6 };
            let s = min_time(reps, || {
                matmul(&pool, &x, m, k, WeightRef::F32(&w), n, None, &mut y).unwrap()
            });
            emit(
                version,
                isa,
                threads,
                "gemm_rowmajor",
                "f32",
                &shape,
                flops / s / 1e9,
                "GFLOP/s",
                s,
            );
            let s = min_time(reps, || {
                matmul(&pool, &x, m, k, WeightRef::Bf16(&wb), n, None, &mut y).unwrap()
            });
            emit(
                version,
                isa,
                threads,
                "gemm_rowmajor",
                "bf16",
                &shape,
                flops / s / 1e9,
                "GFLOP/s",
                s,
            );
            {
                let pf = PackedMatrix::pack_f32(&w, n, k).unwrap();
                let s = min_time(reps, || {
                    matmul_packed(&pool, &x, m, &pf, None, &mut y).unwrap()
                });
                emit(
                    version,
                    isa,
                    threads,
                    "gemm_packed",
                    "f32",
                    &shape,
                    flops / s / 1e9,
                    "GFLOP/s",
                    s,
                );
                let pb = PackedMatrix::pack_bf16(&wb, n, k).unwrap();
                let s = min_time(reps, || {
                    matmul_packed(&pool, &x, m, &pb, None, &mut y).unwrap()
                });
                emit(
                    version,
                    isa,
                    threads,
                    "gemm_packed",
                    "bf16",
                    &shape,
                    flops / s / 1e9,
                    "GFLOP/s",
                    s,
                );
                let pq = PackedMatrix::pack_blocks(
                    &BlockTensor::quantize(BlockFormat::Q4_1, &w, n, k).unwrap(),
                );
                let s = min_time(reps, || {
                    matmul_packed(&pool, &x, m, &pq, None, &mut y).unwrap()
                });
                emit(
                    version,
                    isa,
                    threads,
                    "gemm_packed",
                    "q4_1",
                    &shape,
                    flops / s / 1e9,
                    "GFLOP/s",
                    s,
                );
            }
        }
    }
}
