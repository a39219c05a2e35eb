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

/// What every measurement line names besides the kernel: build, instruction set, threads.
struct Run<'a> {
    version: &'a str,
    isa: Isa,
    threads: usize,
    pool: CpuPool,
}

impl Run<'_> {
    /// Prints one measurement as a JSON line.
    fn emit(&self, kind: &str, what: &str, shape: &str, value: f64, unit: &str, secs: f64) {
        let (version, isa, t) = (self.version, self.isa, self.threads);
        println!("{{\"version\":\"{version}\",\"isa\":\"{isa:?}\",\"threads\":{t},\"kind\":\"{kind}\",\"weights\":\"{what}\",\"shape\":\"{shape}\",\"value\":{value:.3},\"unit\":\"{unit}\",\"min_seconds\":{secs:.6}}}");
    }
}

fn main() {
    let threads = 2;
    let isas: Vec<Isa> = [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|i| i.is_available())
        .collect();
    for isa in isas {
        let run = Run {
            version: "after",
            isa,
            threads,
            pool: CpuPool::with_isa(threads, isa).unwrap(),
        };
        for (n, k) in [(49152usize, 576usize), (1536, 576)] {
            gemv_rates(&run, n, k);
        }
        for m in [64usize, 512] {
            gemm_rates(&run, m, 576, 1536);
        }
    }
}

/// GEMV rates of an `n x k` weight, row-major and packed, cycling through enough copies
/// of the weights that each call reads them from memory.
fn gemv_rates(run: &Run<'_>, n: usize, k: usize) {
    let pool = &run.pool;
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
    let mut rowmajor = |what: &str, bytes: usize, w: Vec<WeightRef<'_>>| {
        let s = min_time(20, || {
            matmul(pool, &x, 1, k, w[i % copies], n, None, &mut y).unwrap();
            i += 1;
        });
        let rate = (n * k * bytes) as f64 / s / 1e9;
        run.emit("gemv_rowmajor", what, &shape, rate, "GB/s", s);
    };
    rowmajor("f32", 4, ws.iter().map(|w| WeightRef::F32(w)).collect());
    rowmajor("bf16", 2, wb.iter().map(|w| WeightRef::Bf16(w)).collect());
    let mut packed = |what: &str, ps: Vec<PackedMatrix>, bytes: Option<usize>| {
        let s = min_time(20, || {
            matmul_packed(pool, &x, 1, &ps[i % copies], None, &mut y).unwrap();
            i += 1;
        });
        let bytes = bytes.unwrap_or_else(|| ps[0].storage_bytes());
        run.emit(
            "gemv_packed",
            what,
            &shape,
            bytes as f64 / s / 1e9,
            "GB/s",
            s,
        );
    };
    let pack = |w: &Vec<f32>| PackedMatrix::pack_f32(w, n, k).unwrap();
    packed("f32", ws.iter().map(pack).collect(), None);
    let pack = |w: &Vec<bf16>| PackedMatrix::pack_bf16(w, n, k).unwrap();
    packed("bf16", wb.iter().map(pack).collect(), None);
    let pack = |w: &Vec<f32>| {
        PackedMatrix::pack_blocks(&BlockTensor::quantize(BlockFormat::Q4_1, w, n, k).unwrap())
    };
    // Bytes of the GGUF blocks (20 per 32 values), what a GEMV must stream.
    packed("q4_1", ws.iter().map(pack).collect(), Some(n * k / 32 * 20));
}

/// GEMM rates of `m` rows against an `n x k` weight, row-major and packed.
fn gemm_rates(run: &Run<'_>, m: usize, k: usize, n: usize) {
    let pool = &run.pool;
    let w = filled(n * k, 7);
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let x = filled(m * k, 3);
    let mut y = vec![0.0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let shape = format!("m{m}_k{k}_n{n}");
    let reps = if m == 64 { 20 } else { 6 };
    let mut rowmajor = |what: &str, w: WeightRef<'_>| {
        let s = min_time(reps, || matmul(pool, &x, m, k, w, n, None, &mut y).unwrap());
        run.emit("gemm_rowmajor", what, &shape, flops / s / 1e9, "GFLOP/s", s);
    };
    rowmajor("f32", WeightRef::F32(&w));
    rowmajor("bf16", WeightRef::Bf16(&wb));
    let mut packed = |what: &str, p: PackedMatrix| {
        let s = min_time(reps, || {
            matmul_packed(pool, &x, m, &p, None, &mut y).unwrap()
        });
        run.emit("gemm_packed", what, &shape, flops / s / 1e9, "GFLOP/s", s);
    };
    packed("f32", PackedMatrix::pack_f32(&w, n, k).unwrap());
    packed("bf16", PackedMatrix::pack_bf16(&wb, n, k).unwrap());
    packed(
        "q4_1",
        PackedMatrix::pack_blocks(&BlockTensor::quantize(BlockFormat::Q4_1, &w, n, k).unwrap()),
    );
}
