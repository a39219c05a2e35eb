//! Decode-shaped GEMV read rates against a streaming sum, in one run: packed panels laid
//! out as SmolLM2-135M's matmuls (30 layers of q/k/v, o, gate/up and down, plus the tied
//! head), one row each, in model order, at f32, bf16 and Q4_1. Prints one JSON line per
//! round: GB/s of weight bytes for each precision and of a plain streaming sum over a
//! buffer as large as the f32 weights.
//!
//! `cargo run --release -p tessera-kernels --example gemv_stream [ISA] [rounds] [rows] [precisions]`
//! (ISA `avx512bf16`, `avx512` or `avx2`; rows of x, default 1; precisions default
//! `f32,bf16,q4_1`).
use std::time::Instant;
use tessera_kernels::*;

/// Deterministic weights in [-0.06, 0.06].
fn weights(n: usize, k: usize, seed: usize) -> Vec<f32> {
    (0..n * k)
        .map(|j| ((j + seed) % 13) as f32 * 0.01 - 0.06)
        .collect()
}

/// The model's matmuls at one precision.
fn model(shapes: &[(usize, usize)], dtype: &str) -> Vec<PackedMatrix> {
    let pack = |(i, &(n, k)): (usize, &(usize, usize))| {
        let w = weights(n, k, i);
        match dtype {
            "bf16" => {
                let b: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
                PackedMatrix::pack_bf16(&b, n, k).expect("pack bf16")
            }
            "q4_1" => PackedMatrix::pack_blocks(
                &BlockTensor::quantize(BlockFormat::Q4_1, &w, n, k).expect("quantize"),
            ),
            _ => PackedMatrix::pack_f32(&w, n, k).expect("pack f32"),
        }
    };
    shapes.iter().enumerate().map(pack).collect()
}

/// GB/s of one step's matmuls over `rows` rows of x (weight bytes over time).
fn gemv_rate(pool: &CpuPool, mats: &[PackedMatrix], rows: usize) -> f64 {
    let bytes: usize = mats.iter().map(|m| m.storage_bytes()).sum();
    let xs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.5; rows * m.cols()]).collect();
    let mut ys: Vec<Vec<f32>> = mats.iter().map(|m| vec![0.0; rows * m.rows()]).collect();
    let t = Instant::now();
    for ((m, x), y) in mats.iter().zip(&xs).zip(ys.iter_mut()) {
        matmul_packed(pool, x, rows, m, None, y).expect("gemv");
    }
    bytes as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// GB/s of a streaming sum over `buf`, split over the pool's threads.
fn stream_rate(pool: &CpuPool, buf: &[f32]) -> f64 {
    let (len, threads) = (buf.len(), pool.threads());
    let sink = std::sync::atomic::AtomicU32::new(0);
    let t = Instant::now();
    pool.run(|i| {
        let part = &buf[len * i / threads..len * (i + 1) / threads];
        let mut acc = [[0.0f32; 16]; 4];
        for c in part.chunks_exact(64) {
            for (j, lanes) in acc.iter_mut().enumerate() {
                for (a, x) in lanes.iter_mut().zip(&c[16 * j..16 * j + 16]) {
                    *a += *x;
                }
            }
        }
        let s: f32 = acc.iter().flatten().sum();
        sink.fetch_add(s as u32, std::sync::atomic::Ordering::Relaxed);
    });
    (len * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let mut args = std::env::args().skip(1);
    let isa = match args.next().as_deref() {
        Some("avx2") => Isa::Avx2,
        Some("avx512") => Isa::Avx512,
        Some("avx512bf16") => Isa::Avx512Bf16,
        _ => Isa::detect(),
    };
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    // Rows of x per matmul: 1 is decode; a few tens is a paced prefill step.
    let rows: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(1);
    let pool = CpuPool::with_isa(2, isa).expect("pool");
    let shapes: Vec<(usize, usize)> = (0..30)
        .flat_map(|_| [(960, 576), (576, 576), (3072, 576), (576, 1536)])
        .chain([(49152, 576)])
        .collect();
    let only = args.next().unwrap_or_else(|| "f32,bf16,q4_1".into());
    let dtypes: Vec<&str> = only.split(',').collect();
    let models: Vec<Vec<PackedMatrix>> = dtypes.iter().map(|d| model(&shapes, d)).collect();
    let f32_bytes: usize = shapes.iter().map(|(n, k)| n * k * 4).sum();
    let big: Vec<f32> = (0..f32_bytes / 4).map(|i| (i % 7) as f32).collect();
    for m in &models {
        gemv_rate(&pool, m, rows); // first touch
    }
    for round in 0..rounds {
        let stream = stream_rate(&pool, &big);
        let rates: Vec<String> = dtypes
            .iter()
            .zip(&models)
            .map(|(d, m)| format!("\"{d}\":{:.2}", gemv_rate(&pool, m, rows)))
            .collect();
        println!(
            "{{\"isa\":\"{isa:?}\",\"rows\":{rows},\"round\":{round},\"stream\":{stream:.2},{}}}",
            rates.join(",")
        );
    }
}
