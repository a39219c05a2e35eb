//! GEMV bandwidth (GB/s), GEMM throughput (GFLOP/s, shown as Gelem/s) and pool dispatch
//! overhead. Weights rotate through copies larger than L3, as in a real decode step.
//!
//! `cargo bench -p tessera-kernels --bench kernels -- [filter]`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use tessera_kernels::{
    attention, matmul, matmul_chunked, AttentionShape, ChunkOutput, CpuPool, Isa, WeightRef,
};

/// Total bytes of weight copies to cycle through, so each call reads from DRAM.
const COLD_BYTES: usize = 256 << 20;

fn short(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group("kernels");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    g
}

fn filled(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0
                - 0.5
        })
        .collect()
}

fn pools() -> Vec<CpuPool> {
    let isa = Isa::detect();
    vec![
        CpuPool::with_isa(1, isa).unwrap(),
        CpuPool::with_isa(2, isa).unwrap(),
    ]
}

fn gemv(c: &mut Criterion) {
    let mut g = short(c);
    for (n, k) in [(49152, 576), (1536, 576), (576, 1536)] {
        let copies = COLD_BYTES.div_ceil(n * k * 4);
        let ws: Vec<Vec<f32>> = (0..copies).map(|s| filled(n * k, s as u32)).collect();
        let wb: Vec<Vec<bf16>> = (0..COLD_BYTES.div_ceil(n * k * 2))
            .map(|s| ws[s % copies].iter().map(|&v| bf16::from_f32(v)).collect())
            .collect();
        let x = filled(k, 99);
        let mut y = vec![0.0; n];
        for pool in pools() {
            let t = pool.threads();
            g.throughput(Throughput::BytesDecimal((n * k * 4) as u64));
            let mut i = 0;
            g.bench_function(
                BenchmarkId::new(format!("gemv_f32_{n}x{k}"), format!("{t}t")),
                |b| {
                    b.iter(|| {
                        i = (i + 1) % ws.len();
                        matmul(&pool, &x, 1, k, WeightRef::F32(&ws[i]), n, None, &mut y).unwrap();
                        black_box(&y);
                    })
                },
            );
            g.throughput(Throughput::BytesDecimal((n * k * 2) as u64));
            let mut i = 0;
            g.bench_function(
                BenchmarkId::new(format!("gemv_bf16_{n}x{k}"), format!("{t}t")),
                |b| {
                    b.iter(|| {
                        i = (i + 1) % wb.len();
                        matmul(&pool, &x, 1, k, WeightRef::Bf16(&wb[i]), n, None, &mut y).unwrap();
                        black_box(&y);
                    })
                },
            );
        }
    }
    g.finish();
}

fn gemm(c: &mut Criterion) {
    let mut g = short(c);
    let (k, n) = (576, 1536);
    let w = filled(n * k, 1);
    for m in [4, 16, 64, 256] {
        let x = filled(m * k, 2);
        let mut y = vec![0.0; m * n];
        for pool in pools() {
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            let id = BenchmarkId::new(
                format!("gemm_m{m}_k{k}_n{n}"),
                format!("{}t", pool.threads()),
            );
            g.bench_function(id, |b| {
                b.iter(|| {
                    matmul(&pool, &x, m, k, WeightRef::F32(&w), n, None, &mut y).unwrap();
                    black_box(&y);
                })
            });
        }
    }
    g.finish();
}

/// The row-parallel projections (o_proj: k = 576 in 64-wide head chunks; down_proj:
/// k = 1536 in 128-wide chunks) as one plain reduction and as the deterministic chunk fold.
fn gemm_chunked(c: &mut Criterion) {
    let mut g = short(c);
    let pool = CpuPool::new(2).unwrap();
    for (k, chunk) in [(576, 64), (1536, 128)] {
        let n = 576;
        let w = filled(n * k, 3);
        for m in [1, 64, 256] {
            let x = filled(m * k, 4);
            let mut y = vec![0.0; m * n];
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(format!("rowpar_plain_m{m}_k{k}/2t"), |b| {
                b.iter(|| {
                    matmul(&pool, &x, m, k, WeightRef::F32(&w), n, None, &mut y).unwrap();
                    black_box(&y);
                })
            });
            g.bench_function(format!("rowpar_chunk{chunk}_m{m}_k{k}/2t"), |b| {
                b.iter(|| {
                    let wr = WeightRef::F32(&w);
                    matmul_chunked(
                        &pool,
                        &x,
                        m,
                        k,
                        wr,
                        n,
                        None,
                        chunk,
                        ChunkOutput::Fold,
                        &mut y,
                    )
                    .unwrap();
                    black_box(&y);
                })
            });
        }
    }
    g.finish();
}

/// GEMM on weights larger than the caches, as in a model's batched decode step.
fn gemm_cold(c: &mut Criterion) {
    let mut g = short(c);
    let (k, n, m) = (576, 3072, 48);
    let copies = COLD_BYTES.div_ceil(n * k * 4);
    let ws: Vec<Vec<f32>> = (0..copies).map(|s| filled(n * k, s as u32)).collect();
    let x = filled(m * k, 2);
    let mut y = vec![0.0; m * n];
    let pool = CpuPool::new(2).unwrap();
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    let mut i = 0;
    g.bench_function(format!("gemm_cold_m{m}_k{k}_n{n}/2t"), |b| {
        b.iter(|| {
            i = (i + 1) % ws.len();
            matmul(&pool, &x, m, k, WeightRef::F32(&ws[i]), n, None, &mut y).unwrap();
            black_box(&y);
        })
    });
    g.finish();
}

fn dispatch(c: &mut Criterion) {
    let mut g = short(c);
    let pool = CpuPool::new(2).unwrap();
    g.bench_function("dispatch_empty_2t", |b| {
        b.iter(|| {
            pool.run(|t| {
                black_box(t);
            })
        })
    });
    g.finish();
}

fn attend(c: &mut Criterion) {
    let mut g = short(c);
    let (hq, hkv, d, s) = (9, 3, 64, 1024);
    let kv_index: Vec<usize> = (0..hq).map(|h| h / 3).collect();
    let q = filled(hq * d, 3);
    let k = filled(s * hkv * d, 4);
    let v = filled(s * hkv * d, 5);
    let mut out = vec![0.0; hq * d];
    for pool in pools() {
        let shape = AttentionShape {
            tokens: 1,
            start: s - 1,
            head_dim: d,
            kv_heads: hkv,
            kv_index: &kv_index,
            window: None,
        };
        g.bench_function(
            BenchmarkId::new("attention_decode_s1024", format!("{}t", pool.threads())),
            |b| {
                b.iter(|| {
                    attention(&pool, &q, &k, &v, &shape, &mut out).unwrap();
                    black_box(&out);
                })
            },
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    gemv,
    gemm,
    gemm_chunked,
    gemm_cold,
    dispatch,
    attend
);
criterion_main!(benches);
