//! The matmul's defined order written as plainly as possible, for tests.

use super::{check_operands, ChunkOutput, Elem, WeightRef};
use crate::error::{check_len, mul, KernelError};

/// Plain single-threaded reference with the same defined order (a serial `mul_add` chain over k from +0, then + bias), for tests.
pub fn matmul_reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_chunked_reference(x, m, k, w, n, bias, usize::MAX, ChunkOutput::Fold, y)
}

/// Single-threaded reference of [`super::matmul_chunked`], written plainly, for tests.
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
pub fn matmul_chunked_reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    chunk: usize,
    output: ChunkOutput,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("w", mul("w", n, k)?, w.len())?;
    let chunks = check_operands(x, m, k, n, bias, chunk, output, y.len())?;
    fold_chunks((m, n, k), bias, chunk, output, chunks, y, |i, j, lo, hi| {
        let xs = &x[i * k + lo..i * k + hi];
        match w {
            WeightRef::F32(w) => dot_reference(xs, &w[j * k + lo..j * k + hi]),
            WeightRef::Bf16(w) => dot_reference(xs, &w[j * k + lo..j * k + hi]),
        }
    });
    Ok(())
}

/// The references' walk over checked operands: `dot(i, j, lo, hi)` is the sum of chunk
/// `lo..hi` for output (i, j); chunk sums go to their slabs, or are added left to right
/// (then the bias).
pub(crate) fn fold_chunks(
    (m, n, k): (usize, usize, usize),
    bias: Option<&[f32]>,
    chunk: usize,
    output: ChunkOutput,
    chunks: usize,
    y: &mut [f32],
    dot: impl Fn(usize, usize, usize, usize) -> f32,
) {
    // A fold over k = 0 is one empty chunk: zero (plus bias).
    let chunks = match output {
        ChunkOutput::Fold => chunks.max(1),
        ChunkOutput::Partials => chunks,
    };
    let slab = m * n;
    for i in 0..m {
        for j in 0..n {
            let mut total = 0.0f32;
            for c in 0..chunks {
                let lo = (c.saturating_mul(chunk)).min(k);
                let hi = lo.saturating_add(chunk).min(k);
                let s = dot(i, j, lo, hi);
                match output {
                    ChunkOutput::Partials => y[c * slab + i * n + j] = s,
                    ChunkOutput::Fold => total = if c == 0 { s } else { total + s },
                }
            }
            if output == ChunkOutput::Fold {
                y[i * n + j] = bias.map_or(total, |b| total + b[j]);
            }
        }
    }
}

/// The defined order of one chunk: `acc = +0; acc = fma(x[k], w[k], acc)` for k in order.
fn dot_reference<E: Elem>(x: &[f32], w: &[E]) -> f32 {
    x.iter()
        .zip(w)
        .fold(0.0f32, |acc, (&xv, &wv)| xv.mul_add(wv.to_f32(), acc))
}
