//! `y = x · wᵀ (+ bias)`: the public matmul over row-major or packed weights, its
//! reference, and the element types the kernels load.
//!
//! Weights are multiplied from *panels* of 16 output rows stored k-major, so one vector
//! load gives the weights of 16 outputs at one k, and every output's sum is a serial fma
//! chain over k, vectorised across outputs (no horizontal sums):
//!
//! ```text
//!  w (n x k, row-major)               packed panel p (rows 16p .. 16p+15)
//!  row 16p    : w00 w01 w02 ...       k=0: w00 w10 w20 ... wF0   <- one zmm / two ymm
//!  row 16p+1  : w10 w11 w12 ...       k=1: w01 w11 w21 ... wF1
//!   ...                               ...
//!  row 16p+15 : wF0 wF1 wF2 ...       (the last panel is padded with zero rows)
//! ```
//!
//! A thread owns a contiguous range of panels (output columns); inside it, x is walked in
//! row blocks that fit in L2 and register tiles of `mr` rows x `np` panels are computed.
//! Tile shapes, blocks and thread ranges only decide which accumulators live together,
//! never the operations an accumulator sees, so none of them changes a single bit of y.
//!
//! Packed bf16 weights use panels of k *pairs* instead, and x rounded to bf16, so that CPUs
//! with AVX-512 BF16 multiply them with `vdpbf16ps` and every other path follows its order
//! with fmas ([`pairs`]). Row-major bf16 weights (`matmul` with [`WeightRef::Bf16`]) keep
//! f32 activations and widen the weights exactly.

mod blocks;
#[cfg(target_arch = "x86_64")]
mod blocks_x86;
mod drive;
mod packed;
mod pairs;
mod reference;
mod rows_pack;
#[cfg(target_arch = "x86_64")]
mod rows_x86;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

use half::bf16;

pub use packed::{matmul_packed, matmul_packed_chunked, PackedMatrix, PackedWeight};
pub use pairs::matmul_bf16_reference;
pub use reference::{matmul_chunked_reference, matmul_reference};

use crate::error::{check_len, mul, KernelError};
use crate::pool::CpuPool;
use drive::{run, Job, Panels};

/// A weight matrix [n, k] row-major (Hugging Face layout: out_features x in_features), f32 or bf16 storage.
#[derive(Debug, Clone, Copy)]
pub enum WeightRef<'a> {
    /// 32-bit float weights.
    F32(&'a [f32]),
    /// bfloat16 weights, widened exactly to f32 (`bits << 16`) as they are loaded.
    Bf16(&'a [bf16]),
}

impl WeightRef<'_> {
    /// Number of stored elements.
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::Bf16(w) => w.len(),
        }
    }

    /// Whether the matrix has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A weight element type the kernels can load: f32, or bf16 widened exactly.
pub(crate) trait Elem: Copy + Default + Send + Sync + 'static {
    /// Lets SIMD loaders pick their widening code at compile time.
    const IS_BF16: bool;
    /// The exact f32 value of this element.
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    const IS_BF16: bool = false;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for bf16 {
    const IS_BF16: bool = true;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // Written out (rather than `bf16::to_f32`) so NaN bits match the SIMD widening.
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// What a chunked matmul writes for its reduction chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutput {
    /// `y[m*n]`: the chunks' sums added left to right (the first chunk's sum, plus the
    /// second's, ...), then the bias.
    Fold,
    /// `y[chunks*m*n]`: chunk `c`'s sums at `y[c*m*n ..]`, for a caller (another rank) to
    /// continue the fold; no bias.
    Partials,
}

/// Number of reduction chunks of width `chunk` over `k` (the last may be shorter).
pub fn chunk_count(k: usize, chunk: usize) -> usize {
    k.div_ceil(chunk.max(1))
}

/// y[m*n] = x[m*k] · w[n*k]^T (+ bias[n]) with the fixed reduction order; work split over pool threads by columns n (contiguous ranges, cache-friendly), any m >= 1.
///
/// The row-major weights are packed into panels on the fly, a panel group at a time; a
/// caller that multiplies by the same weights again should pack them once
/// ([`PackedMatrix`]) and call [`matmul_packed`], which gives the same bits.
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
pub fn matmul(
    pool: &CpuPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("w", mul("w", n, k)?, w.len())?;
    check_operands(x, m, k, n, bias, usize::MAX, ChunkOutput::Fold, y.len())?;
    let job = Job::new(x, m, k, n, Panels::Rows(w), bias, y, usize::MAX, 0);
    run(pool, &job);
    Ok(())
}

/// `y = x · wᵀ (+ bias)` with the reduction over k cut into fixed chunks of `chunk` columns.
///
/// Each chunk is reduced in the fixed order of [`matmul`] (a serial fma chain from +0 at
/// the chunk's first column), and the chunk sums are added left to right. Because the
/// chunk grid is global, a rank holding chunks `a..b` of a row-parallel weight computes
/// exactly the partial sums that one rank holding every chunk computes, and a fold in
/// chunk order gives the same bits at any rank count. `chunk` must be positive;
/// `chunk >= k` is plain [`matmul`].
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
pub fn matmul_chunked(
    pool: &CpuPool,
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
    run_chunked(
        pool,
        x,
        m,
        k,
        Panels::Rows(w),
        n,
        bias,
        chunk,
        output,
        y,
        chunks,
    );
    Ok(())
}

/// Runs checked chunked operands (shared by the row-major and packed entry points).
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
pub(crate) fn run_chunked(
    pool: &CpuPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: Panels<'_>,
    n: usize,
    bias: Option<&[f32]>,
    chunk: usize,
    output: ChunkOutput,
    y: &mut [f32],
    chunks: usize,
) {
    if output == ChunkOutput::Partials && chunks == 0 {
        // k = 0: no chunk, nothing to write.
        return;
    }
    let partial_stride = match output {
        ChunkOutput::Fold => 0,
        ChunkOutput::Partials => m * n,
    };
    let job = Job::new(x, m, k, n, w, bias, y, chunk, partial_stride);
    run(pool, &job);
}

/// Checks everything but the weights: the chunk, a bias only with a fold, then y, x and
/// bias lengths; returns the number of chunks.
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
pub(crate) fn check_operands(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    chunk: usize,
    output: ChunkOutput,
    y_len: usize,
) -> Result<usize, KernelError> {
    if chunk == 0 {
        return Err(KernelError::Invalid {
            what: "chunk",
            reason: "reduction chunks must be at least one column wide".into(),
        });
    }
    let chunks = chunk_count(k, chunk);
    let slab = mul("y", m, n)?;
    let expected_y = match output {
        ChunkOutput::Fold => slab,
        ChunkOutput::Partials => {
            if bias.is_some() {
                return Err(KernelError::Invalid {
                    what: "bias",
                    reason: "partial sums take no bias (add it once, after the fold)".into(),
                });
            }
            mul("y", chunks, slab)?
        }
    };
    check_len("y", expected_y, y_len)?;
    check_len("x", mul("x", m, k)?, x.len())?;
    if let Some(bias) = bias {
        check_len("bias", n, bias.len())?;
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::drive::{thread_columns, COLUMN_UNIT};

    #[test]
    fn thread_columns_tile_the_range_in_order_without_gaps() {
        for n in [0, 1, 7, 8, 9, 100, 576, 49152] {
            for threads in 1..=5 {
                let mut next = 0;
                for t in 0..threads {
                    let cols = thread_columns(n, threads, t);
                    assert_eq!(cols.start, next, "n={n} threads={threads} t={t}");
                    assert!(cols.start.is_multiple_of(COLUMN_UNIT) || cols.is_empty());
                    next = cols.end;
                }
                assert_eq!(next, n, "n={n} threads={threads}");
            }
        }
    }
}
