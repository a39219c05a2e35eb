//! The matmul's one promise: every path, tile, batch size and thread count gives the
//! reference's bits, and the reference is a correct matmul.

mod common;

use candle_core::{Device, Tensor};
use common::{bits, pools, rng, uniform, uniform_bf16};
use half::bf16;
use rand::Rng;
use tessera_kernels::{
    matmul, matmul_chunked, matmul_chunked_reference, matmul_reference, ChunkOutput, CpuPool, Isa,
    KernelError, WeightRef,
};

/// Shapes around the tile and chunk edges, plus a few random ones, all with enough work
/// to be split across threads when n is large.
fn shapes(seed: u64) -> Vec<(usize, usize, usize)> {
    let mut shapes = vec![
        (1, 1, 1),
        (1, 15, 7),
        (1, 16, 8),
        (1, 17, 33),
        (1, 576, 300),
        (2, 33, 5),
        (3, 100, 257),
        (4, 64, 64),
        (5, 47, 13),
        (17, 129, 71),
        (64, 77, 45),
        (1, 0, 3),
    ];
    let mut r = rng(seed);
    for _ in 0..8 {
        shapes.push((
            r.random_range(1..=64),
            r.random_range(1..=300),
            r.random_range(1..=150),
        ));
    }
    shapes
}

fn reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    matmul_reference(x, m, k, w, n, bias, &mut y).unwrap();
    y
}

fn run(
    pool: &CpuPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![f32::NAN; m * n];
    matmul(pool, x, m, k, w, n, bias, &mut y).unwrap();
    y
}

#[test]
fn matmul_equals_reference_bitwise_on_every_isa_and_thread_count() {
    let pools = pools(&[1, 2, 3]);
    for (case, (m, k, n)) in shapes(1).into_iter().enumerate() {
        let mut r = rng(100 + case as u64);
        let x = uniform(&mut r, m * k);
        let w = uniform(&mut r, n * k);
        let wb = uniform_bf16(&mut r, n * k);
        let bias = uniform(&mut r, n);
        for b in [None, Some(&bias[..])] {
            for wr in [WeightRef::F32(&w), WeightRef::Bf16(&wb)] {
                let want = bits(&reference(&x, m, k, wr, n, b));
                for pool in &pools {
                    let got = bits(&run(pool, &x, m, k, wr, n, b));
                    assert_eq!(got, want, "{pool:?} m={m} k={k} n={n} bias={}", b.is_some());
                }
            }
        }
    }
}

#[test]
fn reference_matmul_is_close_to_candle() {
    for (case, (m, k, n)) in shapes(2).into_iter().enumerate().filter(|(_, s)| s.1 > 0) {
        let mut r = rng(200 + case as u64);
        let x = uniform(&mut r, m * k);
        let w = uniform(&mut r, n * k);
        let bias = uniform(&mut r, n);
        let ours = reference(&x, m, k, WeightRef::F32(&w), n, Some(&bias));
        let xt = Tensor::from_slice(&x, (m, k), &Device::Cpu).unwrap();
        let wt = Tensor::from_slice(&w, (n, k), &Device::Cpu).unwrap();
        let bt = Tensor::from_slice(&bias, (1, n), &Device::Cpu).unwrap();
        let theirs = xt
            .matmul(&wt.t().unwrap())
            .unwrap()
            .broadcast_add(&bt)
            .unwrap();
        let theirs: Vec<f32> = theirs.flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..m {
            for j in 0..n {
                // Relative to the magnitude of the terms, so cancellation cannot fool it.
                let scale: f32 = (0..k)
                    .map(|l| (x[i * k + l] * w[j * k + l]).abs())
                    .sum::<f32>()
                    + bias[j].abs();
                let (a, b) = (ours[i * n + j], theirs[i * n + j]);
                assert!(
                    (a - b).abs() <= 1e-5 * scale,
                    "m={m} k={k} n={n} ({i},{j}): {a} vs candle {b}"
                );
            }
        }
    }
}

#[test]
fn a_row_is_bit_identical_whatever_the_batch_size_and_threads() {
    let (k, n) = (203, 150);
    let mut r = rng(3);
    let x = uniform(&mut r, 64 * k);
    let w = uniform(&mut r, n * k);
    let bias = uniform(&mut r, n);
    let wr = WeightRef::F32(&w);
    let single_pool = CpuPool::new(1).unwrap();
    let alone: Vec<Vec<u32>> = (0..64)
        .map(|i| {
            bits(&run(
                &single_pool,
                &x[i * k..(i + 1) * k],
                1,
                k,
                wr,
                n,
                Some(&bias),
            ))
        })
        .collect();
    for pool in pools(&[1, 2, 3]) {
        for m in 1..=64 {
            let y = run(&pool, &x[..m * k], m, k, wr, n, Some(&bias));
            for (i, row) in y.chunks(n).enumerate() {
                assert_eq!(bits(row), alone[i], "{pool:?} m={m} row {i}");
            }
        }
    }
}

#[test]
fn rows_split_into_several_row_blocks_keep_their_bits_at_large_k() {
    // A row block holds 192 KiB of x: at k = 2048 that is 24 rows, at k = 4096 12 rows,
    // so batches past a dozen rows (and the 300-row prefill) run as several blocks, and
    // each row must still get the bits it gets alone. (n is small to keep the test quick:
    // the row blocking depends on k alone.)
    let n = 19;
    let single_pool = CpuPool::new(1).unwrap();
    let pools = pools(&[1, 2, 3]);
    for k in [2048, 4096] {
        let mut r = rng(k as u64);
        let x = uniform(&mut r, 300 * k);
        let w = uniform(&mut r, n * k);
        let wb = uniform_bf16(&mut r, n * k);
        for wr in [WeightRef::F32(&w), WeightRef::Bf16(&wb)] {
            let alone: Vec<Vec<u32>> = (0..300)
                .map(|i| {
                    bits(&run(
                        &single_pool,
                        &x[i * k..(i + 1) * k],
                        1,
                        k,
                        wr,
                        n,
                        None,
                    ))
                })
                .collect();
            for pool in &pools {
                for m in (1..=64).chain([300]) {
                    let y = run(pool, &x[..m * k], m, k, wr, n, None);
                    for (i, row) in y.chunks(n).enumerate() {
                        assert_eq!(bits(row), alone[i], "{pool:?} k={k} m={m} row {i}");
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_weights_give_the_bits_of_the_same_weights_widened_to_f32() {
    let (m, k, n) = (6, 333, 90);
    let mut r = rng(4);
    let x = uniform(&mut r, m * k);
    let mut wb = uniform_bf16(&mut r, n * k);
    // Extremes of the format widen exactly too.
    wb[0] = bf16::MAX;
    wb[1] = bf16::MIN_POSITIVE_SUBNORMAL;
    wb[2] = bf16::NEG_ZERO;
    let wf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
    for pool in pools(&[1, 2]) {
        let from_bf16 = run(&pool, &x, m, k, WeightRef::Bf16(&wb), n, None);
        let from_f32 = run(&pool, &x, m, k, WeightRef::F32(&wf), n, None);
        assert_eq!(bits(&from_bf16), bits(&from_f32), "{pool:?}");
    }
}

#[test]
fn short_last_chunk_leaves_negative_zero_accumulators_alone() {
    // x * w underflows to -0 in every lane of the first chunk; a tail lane that did
    // `-0 + 0 * 0` would turn into +0 and change the sum's sign.
    let k = 17;
    let x = vec![1e-30f32; k];
    let mut w = vec![-1e-30f32; k];
    w[16] = -1e-30;
    let want = bits(&reference(&x, 1, k, WeightRef::F32(&w), 1, None));
    assert_eq!(want, vec![(-0.0f32).to_bits()]);
    for pool in pools(&[1]) {
        assert_eq!(
            bits(&run(&pool, &x, 1, k, WeightRef::F32(&w), 1, None)),
            want,
            "{pool:?}"
        );
    }
}

#[test]
fn mismatched_lengths_are_reported_not_panicked_on() {
    let pool = CpuPool::new(2).unwrap();
    let (x, w) = (vec![0.0; 6], vec![0.0; 6]);
    let mut y = vec![0.0; 5];
    let err = matmul(&pool, &x, 2, 3, WeightRef::F32(&w), 2, None, &mut y).unwrap_err();
    assert_eq!(
        err,
        KernelError::Length {
            what: "y",
            expected: 4,
            actual: 5
        }
    );
    let mut y = vec![0.0; 4];
    let err = matmul(
        &pool,
        &x,
        2,
        3,
        WeightRef::F32(&w),
        2,
        Some(&[0.0; 3]),
        &mut y,
    )
    .unwrap_err();
    assert_eq!(
        err,
        KernelError::Length {
            what: "bias",
            expected: 2,
            actual: 3
        }
    );
    let err = matmul(&pool, &x, 2, 3, WeightRef::F32(&w[..5]), 2, None, &mut y).unwrap_err();
    assert_eq!(
        err,
        KernelError::Length {
            what: "w",
            expected: 6,
            actual: 5
        }
    );
    assert_eq!(
        CpuPool::with_isa(1, Isa::Scalar).unwrap().isa(),
        Isa::Scalar
    );
}

/// Chunked-matmul shapes: reductions of one to many chunks, a short last chunk, GEMV and GEMM.
fn chunked_shapes() -> Vec<(usize, usize, usize, usize)> {
    vec![
        // (m, k, n, chunk)
        (1, 64, 8, 16),
        (1, 576, 37, 64),
        (3, 200, 9, 64),
        (4, 384, 16, 128),
        (7, 130, 21, 32),
        (17, 256, 33, 128),
        (1, 40, 5, 64),
        (3, 72, 11, 8),
        (2, 100, 6, 24),
        (2, 0, 3, 16),
    ]
}

#[test]
fn chunked_matmul_equals_its_reference_bitwise_on_every_isa_and_thread_count() {
    let pools = pools(&[1, 2, 3]);
    for (case, (m, k, n, chunk)) in chunked_shapes().into_iter().enumerate() {
        let mut r = rng(700 + case as u64);
        let x = uniform(&mut r, m * k);
        let w = uniform(&mut r, n * k);
        let wb = uniform_bf16(&mut r, n * k);
        let bias = uniform(&mut r, n);
        let chunks = tessera_kernels::chunk_count(k, chunk);
        for wr in [WeightRef::F32(&w), WeightRef::Bf16(&wb)] {
            for (output, b, len) in [
                (ChunkOutput::Fold, None, m * n),
                (ChunkOutput::Fold, Some(&bias[..]), m * n),
                (ChunkOutput::Partials, None, chunks * m * n),
            ] {
                let mut want = vec![f32::NAN; len];
                matmul_chunked_reference(&x, m, k, wr, n, b, chunk, output, &mut want).unwrap();
                for pool in &pools {
                    let mut got = vec![f32::NAN; len];
                    matmul_chunked(pool, &x, m, k, wr, n, b, chunk, output, &mut got).unwrap();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{pool:?} m={m} k={k} n={n} chunk={chunk} {output:?}"
                    );
                }
            }
        }
    }
}

/// `matmul_chunked` into a fresh output of the size `output` needs (NaN-poisoned).
#[allow(clippy::too_many_arguments)]
fn run_chunked(
    pool: &CpuPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    chunk: usize,
    output: ChunkOutput,
) -> Vec<f32> {
    let rows = match output {
        ChunkOutput::Fold => m,
        ChunkOutput::Partials => tessera_kernels::chunk_count(k, chunk) * m,
    };
    let mut y = vec![f32::NAN; rows * n];
    matmul_chunked(pool, x, m, k, w, n, None, chunk, output, &mut y).unwrap();
    y
}

#[test]
fn one_chunk_is_the_plain_matmul_and_many_chunks_round_differently() {
    let pool = CpuPool::new(2).unwrap();
    let mut r = rng(801);
    let (m, k, n) = (3, 576, 40);
    let x = uniform(&mut r, m * k);
    let w = uniform(&mut r, n * k);
    let plain = run(&pool, &x, m, k, WeightRef::F32(&w), n, None);
    let one = run_chunked(
        &pool,
        &x,
        m,
        k,
        WeightRef::F32(&w),
        n,
        1024,
        ChunkOutput::Fold,
    );
    assert_eq!(bits(&one), bits(&plain));
    let nine = run_chunked(
        &pool,
        &x,
        m,
        k,
        WeightRef::F32(&w),
        n,
        64,
        ChunkOutput::Fold,
    );
    // Same math, other association: close, but not the same bits everywhere.
    assert_ne!(bits(&nine), bits(&plain));
    for (a, b) in nine.iter().zip(&plain) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
}

#[test]
fn ranks_holding_chunk_ranges_fold_to_the_bits_of_one_rank_holding_all() {
    // A row-parallel weight [n, k] cut along k on chunk boundaries, as ranks hold it: the
    // first rank folds its own chunks, later ranks hand over per-chunk partial sums, and
    // the fold continues in chunk order.
    let pool = CpuPool::new(2).unwrap();
    let mut r = rng(802);
    let (m, k, n, chunk) = (5, 9 * 64, 24, 64);
    let x = uniform(&mut r, m * k);
    let w = uniform(&mut r, n * k);
    let whole = run_chunked(
        &pool,
        &x,
        m,
        k,
        WeightRef::F32(&w),
        n,
        chunk,
        ChunkOutput::Fold,
    );
    for cuts in [
        vec![0, 5, 9],
        vec![0, 3, 6, 9],
        vec![0, 1, 2, 7, 9],
        vec![0, 0, 4, 9],
    ] {
        let mut acc: Option<Vec<f32>> = None;
        for pair in cuts.windows(2) {
            let (lo, hi) = (pair[0] * chunk, pair[1] * chunk);
            let kk = hi - lo;
            if kk == 0 {
                continue;
            }
            let xs: Vec<f32> = (0..m)
                .flat_map(|i| x[i * k + lo..i * k + hi].to_vec())
                .collect();
            let ws: Vec<f32> = (0..n)
                .flat_map(|j| w[j * k + lo..j * k + hi].to_vec())
                .collect();
            match acc.as_mut() {
                None => {
                    let y = run_chunked(
                        &pool,
                        &xs,
                        m,
                        kk,
                        WeightRef::F32(&ws),
                        n,
                        chunk,
                        ChunkOutput::Fold,
                    );
                    acc = Some(y);
                }
                Some(total) => {
                    let parts = run_chunked(
                        &pool,
                        &xs,
                        m,
                        kk,
                        WeightRef::F32(&ws),
                        n,
                        chunk,
                        ChunkOutput::Partials,
                    );
                    for part in parts.chunks_exact(m * n) {
                        for (t, p) in total.iter_mut().zip(part) {
                            *t += *p;
                        }
                    }
                }
            }
        }
        assert_eq!(bits(&acc.unwrap()), bits(&whole), "cuts {cuts:?}");
    }
}

#[test]
fn bad_chunks_and_biased_partials_are_refused() {
    let pool = CpuPool::new(1).unwrap();
    let (x, w) = (vec![1.0; 32], vec![1.0; 64]);
    let mut y = vec![0.0; 2];
    {
        let chunk = 0;
        let err = matmul_chunked(
            &pool,
            &x,
            1,
            32,
            WeightRef::F32(&w),
            2,
            None,
            chunk,
            ChunkOutput::Fold,
            &mut y,
        )
        .unwrap_err();
        assert!(
            matches!(err, KernelError::Invalid { what: "chunk", .. }),
            "{err}"
        );
    }
    let bias = vec![0.0; 2];
    let mut parts = vec![0.0; 4];
    let err = matmul_chunked(
        &pool,
        &x,
        1,
        32,
        WeightRef::F32(&w),
        2,
        Some(&bias),
        16,
        ChunkOutput::Partials,
        &mut parts,
    )
    .unwrap_err();
    assert!(
        matches!(err, KernelError::Invalid { what: "bias", .. }),
        "{err}"
    );
    let mut short = vec![0.0; 3];
    let err = matmul_chunked(
        &pool,
        &x,
        1,
        32,
        WeightRef::F32(&w),
        2,
        None,
        16,
        ChunkOutput::Partials,
        &mut short,
    )
    .unwrap_err();
    assert!(
        matches!(err, KernelError::Length { what: "y", .. }),
        "{err}"
    );
}
