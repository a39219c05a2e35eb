//! Quantized weights multiplied natively: block decoding equals tessera-convert's
//! `dequant.rs`; the matmul follows its integer specification (x rounded to i16 per block,
//! exact integer dots, one fma per block) bit for bit on every path, batch and chunking,
//! and stays within the rounding of x of the f32 matmul on the dequantized weights.

mod common;

use common::{bits, pools, rng, uniform};
use half::f16;
use rand::Rng;
use tessera_kernels::{
    matmul_packed, matmul_packed_chunked, BlockFormat, BlockTensor, ChunkOutput, KernelError,
    PackedMatrix, PackedWeight,
};

const FORMATS: [BlockFormat; 3] = [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1];

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The dequantization of `tessera-convert/src/dequant.rs`, rewritten: multiply, then add.
fn dequant_reference(format: BlockFormat, bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for b in bytes.chunks_exact(format.block_bytes()) {
        let d = f16_at(b, 0);
        match format {
            BlockFormat::Q8_0 => out.extend(b[2..].iter().map(|&q| q as i8 as f32 * d)),
            BlockFormat::Q4_0 => {
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
            BlockFormat::Q4_1 => {
                let (m, qs) = (f16_at(b, 2), &b[4..]);
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
    }
    out
}

/// Random block bytes: every quant value, finite f16 scales and mins of any exponent.
fn random_blocks(format: BlockFormat, rows: usize, cols: usize, seed: u64) -> BlockTensor {
    let mut r = rng(seed);
    let blocks = rows * cols / 32;
    let mut bytes = Vec::new();
    for _ in 0..blocks {
        let mut block: Vec<u8> = (0..format.block_bytes()).map(|_| r.random()).collect();
        let halves = if format == BlockFormat::Q4_1 { 2 } else { 1 };
        for h in 0..halves {
            let exp: u16 = r.random_range(0..31);
            let bits =
                (u16::from(r.random::<bool>()) << 15) | (exp << 10) | r.random_range(0..1024);
            block[2 * h..2 * h + 2].copy_from_slice(&bits.to_le_bytes());
        }
        bytes.extend(block);
    }
    BlockTensor::new(format, rows, cols, bytes).unwrap()
}

/// `y` for `m` rows of `x` over `w`, through `matmul_packed_chunked`.
fn run(
    pool: &tessera_kernels::CpuPool,
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    chunk: usize,
    output: ChunkOutput,
) -> Vec<f32> {
    let chunks = tessera_kernels::chunk_count(w.cols(), chunk);
    let len = match output {
        ChunkOutput::Fold => m * w.rows(),
        ChunkOutput::Partials => chunks * m * w.rows(),
    };
    let mut y = vec![f32::NAN; len];
    matmul_packed_chunked(pool, x, m, w, None, chunk, output, &mut y).unwrap();
    y
}

#[test]
fn decoded_values_equal_the_dequant_reference() {
    for format in FORMATS {
        let t = random_blocks(format, 3, 96, 1);
        assert_eq!(
            bits(&t.dequantize()),
            bits(&dequant_reference(format, t.bytes()))
        );
    }
}

/// x rounded as the kernels round it: per 32 values, `dx = amax / 32767`, `q = x * (1 / dx)`
/// rounded to the nearest integer, ties to even.
fn round_x(x: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let (mut q, mut d) = (Vec::new(), Vec::new());
    for block in x.chunks_exact(32) {
        let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let dx = amax / 32767.0;
        let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
        q.extend(block.iter().map(|v| (v * inv).round_ties_even() as i32));
        d.push(dx);
    }
    (q, d)
}

/// Integer code `j` of a row-major GGML block (Q4_0 nibbles minus 8).
fn code(format: BlockFormat, block: &[u8], j: usize) -> i32 {
    match format {
        BlockFormat::Q8_0 => i32::from(block[2 + j] as i8),
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let qs = if format == BlockFormat::Q4_1 {
                &block[4..]
            } else {
                &block[2..]
            };
            let byte = qs[j % 16];
            let nibble = i32::from(if j < 16 { byte & 0xF } else { byte >> 4 });
            if format == BlockFormat::Q4_0 {
                nibble - 8
            } else {
                nibble
            }
        }
    }
}

/// The kernels' specification, written from the row-major blocks: per chunk, per block of
/// the chunk, `acc = fma(d * dx, Σ code * q, acc)` (and `fma(m, dx * Σ q, acc)` for Q4_1),
/// then the chunk sums folded left to right, or returned as partials.
fn integer_reference(
    t: &BlockTensor,
    x: &[f32],
    m: usize,
    chunk: usize,
    output: ChunkOutput,
) -> Vec<f32> {
    let (n, k, bb) = (t.rows(), t.cols(), t.format().block_bytes());
    let chunks = tessera_kernels::chunk_count(k, chunk);
    let mut partial = vec![0.0f32; chunks * m * n];
    for i in 0..m {
        let (q, dx) = round_x(&x[i * k..(i + 1) * k]);
        for o in 0..n {
            for c in 0..chunks {
                let (k0, k1) = (c * chunk, k.min((c + 1).saturating_mul(chunk)));
                let mut acc = 0.0f32;
                for (b, &dx) in dx.iter().enumerate().take(k1.div_ceil(32)).skip(k0 / 32) {
                    let block = &t.bytes()[o * t.row_bytes() + b * bb..][..bb];
                    let cols = (b * 32).max(k0)..((b + 1) * 32).min(k1);
                    let dot: i32 = cols
                        .clone()
                        .map(|j| code(t.format(), block, j - b * 32) * q[j])
                        .sum();
                    acc = (f16_at(block, 0) * dx).mul_add(dot as f32, acc);
                    if t.format() == BlockFormat::Q4_1 {
                        let s: i32 = cols.map(|j| q[j]).sum();
                        acc = f16_at(block, 2).mul_add(dx * s as f32, acc);
                    }
                }
                partial[c * m * n + i * n + o] = acc;
            }
        }
    }
    if output == ChunkOutput::Partials {
        return partial;
    }
    let mut y = partial[..m * n].to_vec();
    for c in 1..chunks {
        for (y, p) in y.iter_mut().zip(&partial[c * m * n..(c + 1) * m * n]) {
            *y += *p;
        }
    }
    y
}

#[test]
fn native_quantized_matmul_follows_the_integer_reference_bitwise_on_every_path() {
    let pools = pools(&[1, 2, 3]);
    for (case, (rows, cols)) in [(1, 32), (15, 64), (17, 96), (50, 576), (33, 160)]
        .into_iter()
        .enumerate()
    {
        for format in FORMATS {
            let t = random_blocks(format, rows, cols, 10 + case as u64);
            let native = PackedMatrix::pack_blocks(&t);
            assert_eq!(native.weight(), PackedWeight::Blocks(format));
            let mut r = rng(20 + case as u64);
            // 64 rows of 576 are enough values for the rounding to split over threads.
            let x = uniform(&mut r, 64 * cols);
            for (chunk, output) in [
                (usize::MAX, ChunkOutput::Fold),
                (64, ChunkOutput::Fold),
                (24, ChunkOutput::Fold),
                (64, ChunkOutput::Partials),
                (16, ChunkOutput::Partials),
            ] {
                for m in [1, 2, 5, 20, 64] {
                    let want = integer_reference(&t, &x[..m * cols], m, chunk, output);
                    for pool in &pools {
                        let got = run(pool, &x[..m * cols], m, &native, chunk, output);
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "{pool:?} {format:?} {rows}x{cols} m={m} {chunk} {output:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn native_quantized_matmul_stays_within_the_rounding_of_x_of_the_f32_matmul() {
    let pool = tessera_kernels::CpuPool::new(1).unwrap();
    let (rows, cols, m) = (37, 576, 3);
    for format in FORMATS {
        let t = random_blocks(format, rows, cols, 50);
        let w = dequant_reference(format, t.bytes());
        let f32w = PackedMatrix::pack_f32(&w, rows, cols).unwrap();
        let mut r = rng(51);
        // Rows whose blocks differ in scale by 2^20, as activations do.
        let x: Vec<f32> = uniform(&mut r, m * cols)
            .iter()
            .enumerate()
            .map(|(i, v)| v * (((i / 32) % 5) as f32 * 5.0).exp2())
            .collect();
        let want = run(&pool, &x, m, &f32w, usize::MAX, ChunkOutput::Fold);
        let got = run(
            &pool,
            &x,
            m,
            &PackedMatrix::pack_blocks(&t),
            usize::MAX,
            ChunkOutput::Fold,
        );
        for i in 0..m {
            let xr = &x[i * cols..(i + 1) * cols];
            for o in 0..rows {
                let wr = &w[o * cols..(o + 1) * cols];
                // Rounding x moves each product by at most |w| * amax / 65534 of its block
                // (1% for the rounding of x / dx itself); two serial f32 sums over 576
                // terms each err by under 2^-14 of the magnitudes.
                let (mut bound, mut mag) = (0.0f64, 0.0f64);
                for (wb, xb) in wr.chunks(32).zip(xr.chunks(32)) {
                    let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
                    bound += wb.iter().map(|v| v.abs() as f64).sum::<f64>() * amax / 65534.0;
                    mag += wb
                        .iter()
                        .zip(xb)
                        .map(|(a, b)| (a * b).abs() as f64)
                        .sum::<f64>();
                }
                let err = (got[i * rows + o] as f64 - want[i * rows + o] as f64).abs();
                assert!(
                    err <= 1.01 * bound + mag * 2f64.powi(-13),
                    "{format:?} row {i} out {o}: {err} > {bound} + rounding ({mag})"
                );
            }
        }
        assert_ne!(bits(&got), bits(&want), "{format:?}: x was not rounded");
    }
}

#[test]
fn quantized_rows_are_bit_identical_alone_in_a_batch_and_on_every_isa() {
    let (rows, cols) = (40, 128);
    let mut r = rng(30);
    let x = uniform(&mut r, 24 * cols);
    for format in FORMATS {
        let w = PackedMatrix::pack_blocks(&random_blocks(format, rows, cols, 31));
        let one = tessera_kernels::CpuPool::with_isa(1, tessera_kernels::Isa::Scalar).unwrap();
        let alone: Vec<f32> = (0..24)
            .flat_map(|i| {
                run(
                    &one,
                    &x[i * cols..(i + 1) * cols],
                    1,
                    &w,
                    usize::MAX,
                    ChunkOutput::Fold,
                )
            })
            .collect();
        for pool in pools(&[1, 2]) {
            let mut y = vec![0.0; 24 * rows];
            matmul_packed(&pool, &x, 24, &w, None, &mut y).unwrap();
            assert_eq!(bits(&y), bits(&alone), "{pool:?} {format:?}");
        }
    }
}

#[test]
fn quantizers_round_like_ggml_and_stay_within_their_step() {
    let mut r = rng(40);
    let values = uniform(&mut r, 4 * 64);
    for format in FORMATS {
        let t = BlockTensor::quantize(format, &values, 4, 64).unwrap();
        assert_eq!(t.bytes().len(), 8 * format.block_bytes());
        let back = t.dequantize();
        for (b, (blk, vals)) in t
            .bytes()
            .chunks_exact(format.block_bytes())
            .zip(values.chunks_exact(32))
            .enumerate()
        {
            let d = f16_at(blk, 0).abs();
            for (j, (&v, &w)) in vals.iter().zip(&back[b * 32..]).enumerate() {
                // Half a step, except Q4_0's clamp: ggml maps the largest magnitude to -8
                // steps, so the other sign tops out at +7 (a full step short). The f16
                // rounding of the scale adds up to 2^-11 relative per step count.
                let steps = if format == BlockFormat::Q4_0 {
                    1.0
                } else {
                    0.5
                };
                let tol = d * steps + d * 16.0 / 1024.0 + 1e-6;
                assert!(
                    (v - w).abs() <= tol,
                    "{format:?} block {b} value {j}: {v} vs {w}"
                );
            }
        }
    }
    // ggml's Q8_0 of a block whose largest magnitude is 127: scale 1, plain rounding.
    let mut block = [0.0f32; 32];
    block[0] = 127.0;
    block[1] = 2.5;
    block[2] = -3.5;
    let t = BlockTensor::quantize(BlockFormat::Q8_0, &block, 1, 32).unwrap();
    assert_eq!(&t.bytes()[..5], &[0x00, 0x3C, 127, 3, (-4i8) as u8]);
}

#[test]
fn slices_decode_to_the_slices_of_the_decoded_matrix() {
    for format in FORMATS {
        let t = random_blocks(format, 9, 128, 50);
        let all = t.dequantize();
        let rows = t.slice_rows(2..7).unwrap();
        assert_eq!(bits(&rows.dequantize()), bits(&all[2 * 128..7 * 128]));
        let cols = t.slice_cols(32..96).unwrap();
        let want: Vec<f32> = (0..9)
            .flat_map(|r| all[r * 128 + 32..r * 128 + 96].to_vec())
            .collect();
        assert_eq!((cols.rows(), cols.cols()), (9, 64));
        assert_eq!(bits(&cols.dequantize()), bits(&want));
    }
}

#[test]
fn bad_block_shapes_and_ranges_are_typed_errors() {
    let f = BlockFormat::Q4_1;
    let err = BlockTensor::new(f, 2, 48, vec![0; 40]).unwrap_err();
    assert_eq!(
        err,
        KernelError::Misaligned {
            what: "cols",
            value: 48,
            block: 32
        }
    );
    let err = BlockTensor::new(f, 2, 64, vec![0; 79]).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::Length {
                expected: 80,
                actual: 79,
                ..
            }
        ),
        "{err}"
    );
    let err = BlockTensor::quantize(f, &[0.0; 31], 1, 31).unwrap_err();
    assert!(matches!(err, KernelError::Misaligned { .. }), "{err}");
    let t = BlockTensor::new(f, 2, 64, vec![0; 80]).unwrap();
    let err = t.slice_cols(16..64).unwrap_err();
    assert_eq!(
        err,
        KernelError::Misaligned {
            what: "column range start",
            value: 16,
            block: 32
        }
    );
    assert!(matches!(
        t.slice_cols(0..96).unwrap_err(),
        KernelError::Invalid { .. }
    ));
    assert!(matches!(
        t.slice_rows(1..3).unwrap_err(),
        KernelError::Invalid { .. }
    ));
}

#[test]
fn a_nan_activation_reaches_its_rows_outputs_on_every_path() {
    let (rows, cols, m) = (20, 96, 3);
    let mut r = rng(60);
    let mut x = uniform(&mut r, m * cols);
    // Row 1, block 1: the rounding must not turn the NaN into a zero.
    x[cols + 40] = f32::NAN;
    for format in FORMATS {
        let w = PackedMatrix::pack_blocks(&random_blocks(format, rows, cols, 61));
        for pool in pools(&[1, 2]) {
            for (chunk, out) in [(usize::MAX, ChunkOutput::Fold), (32, ChunkOutput::Partials)] {
                let y = run(&pool, &x, m, &w, chunk, out);
                for (i, row) in y.chunks(rows).enumerate() {
                    // Partials: only chunk 1 (columns 32..64) of row 1 holds the NaN.
                    let poisoned = match out {
                        ChunkOutput::Fold => i == 1,
                        ChunkOutput::Partials => i == m + 1,
                    };
                    assert_eq!(
                        row.iter().all(|v| v.is_nan()),
                        poisoned,
                        "{pool:?} {format:?} {out:?} row {i}: {row:?}"
                    );
                }
            }
        }
    }
}
