//! `y = x · wᵀ (+ bias)`: the public matmul, its reference, and the tile walk shared by
//! every instruction-set path.
//!
//! Work is split over pool threads by output columns (weight rows), in contiguous ranges
//! so each thread streams its own slice of the weight once:
//!
//! ```text
//!          w (n x k, row-major)          y (m x n)
//!        +------------------+          +-----+-----+
//!   t0   | rows 0 .. n/2    |          | t0  | t1  |   each thread writes its own
//!        +------------------+          |     |     |   columns of every row of y
//!   t1   | rows n/2 .. n    |          +-----+-----+
//!        +------------------+
//! ```
//!
//! Inside a thread, x is walked in blocks of rows that fit in L2 and tiles of `mr x nr`
//! outputs are computed in registers (`1 x nr_gemv` when m = 1). Tile shapes, blocks and
//! thread ranges only decide *which* accumulators live together, never the order of the
//! operations an accumulator sees, so none of them changes a single bit of y.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

use std::ops::Range;

use half::bf16;

use crate::error::{check_len, mul, KernelError};
use crate::isa::Isa;
use crate::pool::CpuPool;

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

/// Raw operands of one matmul: `y[i*ldy + j] = dot(x[i*ldx ..][..k], w[j*ldw ..][..k]) (+ bias[j])`.
///
/// A kernel given `cols` reads rows `0..m` of x, rows `cols` of w and `bias[cols]`, and
/// writes exactly `y[i*ldy + j]` for `i < m`, `j` in `cols`; callers guarantee those
/// ranges are valid and that no one else touches those `y` elements meanwhile.
#[derive(Clone, Copy)]
pub(crate) struct Operands<E> {
    pub x: *const f32,
    pub ldx: usize,
    pub m: usize,
    pub w: *const E,
    pub ldw: usize,
    pub k: usize,
    /// Null when there is no bias.
    pub bias: *const f32,
    pub y: *mut f32,
    pub ldy: usize,
    /// Width of the fixed reduction chunks over k (`>= k` for one chunk); each chunk starts
    /// its 16 lanes afresh at its first column.
    pub chunk: usize,
    /// 0: `y` gets the left-to-right fold of the chunks' sums (plus bias); otherwise chunk
    /// `c`'s sums go to `y + c * partial_stride` (no bias).
    pub partial_stride: usize,
}

// SAFETY: `Operands` is a bundle of pointers into slices borrowed for the duration of one
// matmul. Threads sharing it only read x, w and bias, and each writes the disjoint set of
// `y` elements belonging to its own column range (the contract above), so no element is
// accessed mutably by two threads. The pointees are f32/bf16, which are Send + Sync.
unsafe impl<E: Elem> Sync for Operands<E> {}

/// One register tile of outputs: rows `i..i+mr` of x against weight rows `j..j+nr`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    pub i: usize,
    pub mr: usize,
    pub j: usize,
    pub nr: usize,
    /// Whether to prefetch the next `nr` weight rows while streaming these: set on the
    /// first tile of a weight group, whose rows then come from memory.
    pub prefetch: bool,
}

/// Register tile shape of one instruction-set path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileShape {
    /// x rows per tile when m > 1.
    pub mr: usize,
    /// w rows per tile when m > 1.
    pub nr: usize,
    /// w rows per tile when m = 1 (GEMV: more weight streams in flight).
    pub nr_gemv: usize,
}

/// Columns are handed to threads in multiples of this (a multiple of every path's tiles).
const COLUMN_UNIT: usize = 8;
/// Below this many multiply-adds a matmul runs on the caller's thread alone.
const PARALLEL_MIN_FMAS: usize = 1 << 15;
/// Bytes of x a row block may occupy, so the block stays in L2 while w streams past it.
const X_BLOCK_BYTES: usize = 192 * 1024;

/// y[m*n] = x[m*k] · w[n*k]^T (+ bias[n]) with the fixed reduction order; work split over pool threads by columns n (contiguous ranges, cache-friendly), any m >= 1.
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
    check_shapes(x, m, k, &w, n, bias, y)?;
    run_checked(pool, x, m, k, w, n, bias, y, usize::MAX, 0);
    Ok(())
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

/// `y = x · wᵀ (+ bias)` with the reduction over k cut into fixed chunks of `chunk` columns.
///
/// Each chunk is reduced in the fixed order of [`matmul`] (16 lanes counted from the chunk's
/// first column, a short last group masked, then the tree), and the chunk sums are added
/// left to right. Because the chunk grid is global, a rank holding
/// chunks `a..b` of a row-parallel weight computes exactly the partial sums that one rank
/// holding every chunk computes, and a fold in chunk order gives the same bits at any rank
/// count. `chunk` must be positive (multiples of 16 waste no lanes); `chunk >= k` is plain
/// [`matmul`].
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
    let chunks = check_chunked(x, m, k, &w, n, bias, chunk, output, y.len())?;
    if output == ChunkOutput::Partials && chunks == 0 {
        // k = 0: no chunk, nothing to write.
        return Ok(());
    }
    let partial_stride = match output {
        ChunkOutput::Fold => 0,
        ChunkOutput::Partials => m * n,
    };
    if m * n > 0 {
        run_checked(pool, x, m, k, w, n, bias, y, chunk, partial_stride);
    }
    Ok(())
}

/// Checks the operands of a chunked matmul (the chunk, a bias only with a fold, then y, x,
/// w and bias lengths); returns the number of chunks.
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
fn check_chunked(
    x: &[f32],
    m: usize,
    k: usize,
    w: &WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    chunk: usize,
    output: ChunkOutput,
    y_len: usize,
) -> Result<usize, KernelError> {
    check_chunk(chunk)?;
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
    check_len("w", mul("w", n, k)?, w.len())?;
    if let Some(bias) = bias {
        check_len("bias", n, bias.len())?;
    }
    Ok(chunks)
}

/// Runs checked operands over the pool, for either weight type, with the given chunk width
/// and partials stride (see [`Operands`]).
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
fn run_checked(
    pool: &CpuPool,
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
    chunk: usize,
    partial_stride: usize,
) {
    let bias = bias.map_or(std::ptr::null(), <[f32]>::as_ptr);
    match w {
        WeightRef::F32(w) => {
            let op = Operands {
                chunk,
                partial_stride,
                ..operands(x, m, k, w, bias, y, n)
            };
            run_parallel(pool, &op, n);
        }
        WeightRef::Bf16(w) => {
            let op = Operands {
                chunk,
                partial_stride,
                ..operands(x, m, k, w, bias, y, n)
            };
            run_parallel(pool, &op, n);
        }
    }
}

/// Single-threaded reference of [`matmul_chunked`], written plainly, for tests.
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
    let chunks = check_chunked(x, m, k, &w, n, bias, chunk, output, y.len())?;
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
                let lo = (c * chunk).min(k);
                let hi = lo.saturating_add(chunk).min(k);
                let xs = &x[i * k + lo..i * k + hi];
                let s = match w {
                    WeightRef::F32(w) => dot_reference(xs, &w[j * k + lo..j * k + hi]),
                    WeightRef::Bf16(w) => dot_reference(xs, &w[j * k + lo..j * k + hi]),
                };
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
    Ok(())
}

/// A chunk is at least one column wide.
fn check_chunk(chunk: usize) -> Result<(), KernelError> {
    if chunk == 0 {
        return Err(KernelError::Invalid {
            what: "chunk",
            reason: "reduction chunks must be at least one column wide".into(),
        });
    }
    Ok(())
}

/// Takes chunk `ci`'s sum `s` of output (row `i`, column `j`): written to the chunk's slab
/// in partials mode, else folded into `total` (the first chunk sets it).
///
/// # Safety
/// (i, j) must be an output the caller covers under the [`Operands`] contract.
#[inline(always)]
pub(crate) unsafe fn take_chunk_sum<E>(
    op: &Operands<E>,
    ci: usize,
    i: usize,
    j: usize,
    s: f32,
    total: &mut f32,
) {
    if op.partial_stride != 0 {
        // SAFETY: chunk ci's slab holds this (row, column) (Operands contract).
        unsafe { *op.y.add(ci * op.partial_stride + i * op.ldy + j) = s };
    } else if ci == 0 {
        *total = s;
    } else {
        *total += s;
    }
}

/// Writes a tile's folded sums (plus bias) to y: `total[r][c]` is output (i + r, j + c),
/// for r < mr and c < nr. Nothing to do in partials mode (the chunks are already written).
///
/// # Safety
/// The tile must be covered by the caller under the [`Operands`] contract.
#[inline(always)]
pub(crate) unsafe fn store_folded<E, const NR: usize>(
    op: &Operands<E>,
    i: usize,
    j: usize,
    total: &[[f32; NR]],
    mr: usize,
    nr: usize,
) {
    if op.partial_stride != 0 {
        return;
    }
    for (r, total_row) in total.iter().enumerate().take(mr) {
        for (c, &tot) in total_row.iter().enumerate().take(nr) {
            let mut sum = tot;
            if !op.bias.is_null() {
                // SAFETY: bias has an entry for every covered column.
                sum += unsafe { *op.bias.add(j + c) };
            }
            // SAFETY: this (row, column) is ours to write by the Operands contract.
            unsafe { *op.y.add((i + r) * op.ldy + j + c) = sum };
        }
    }
}

/// End of the reduction chunk that starts at `c0` (`c0` itself when k = 0).
#[inline(always)]
pub(crate) fn chunk_end(op_chunk: usize, k: usize, c0: usize) -> usize {
    c0.saturating_add(op_chunk).min(k)
}

/// Plain single-threaded reference with the same defined order (scalar mul_add per lane), for tests.
pub fn matmul_reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_shapes(x, m, k, &w, n, bias, y)?;
    for (i, y_row) in y.chunks_exact_mut(n.max(1)).take(m).enumerate() {
        let x_row = &x[i * k..(i + 1) * k];
        for (j, out) in y_row.iter_mut().enumerate() {
            let dot = match w {
                WeightRef::F32(w) => dot_reference(x_row, &w[j * k..(j + 1) * k]),
                WeightRef::Bf16(w) => dot_reference(x_row, &w[j * k..(j + 1) * k]),
            };
            *out = bias.map_or(dot, |b| dot + b[j]);
        }
    }
    Ok(())
}

/// The defined order, written as plainly as possible: 16 lane accumulators, fused
/// multiply-add per lane (a short last chunk leaves its missing lanes alone), then the
/// fixed tree reduction.
fn dot_reference<E: Elem>(x: &[f32], w: &[E]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (xc, wc) in x.chunks(16).zip(w.chunks(16)) {
        for (lane, (&xv, &wv)) in xc.iter().zip(wc).enumerate() {
            acc[lane] = xv.mul_add(wv.to_f32(), acc[lane]);
        }
    }
    tree_sum(&acc)
}

/// The fixed horizontal reduction: lanes l and l+8, then l and l+4, l+2, l+1 (low lane first).
#[inline(always)]
pub(crate) fn tree_sum(acc: &[f32; 16]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for l in 0..8 {
        s8[l] = acc[l] + acc[l + 8];
    }
    let s4 = [s8[0] + s8[4], s8[1] + s8[5], s8[2] + s8[6], s8[3] + s8[7]];
    let s2 = [s4[0] + s4[2], s4[1] + s4[3]];
    s2[0] + s2[1]
}

/// Checks every buffer length against (m, k, n).
fn check_shapes(
    x: &[f32],
    m: usize,
    k: usize,
    w: &WeightRef<'_>,
    n: usize,
    bias: Option<&[f32]>,
    y: &[f32],
) -> Result<(), KernelError> {
    check_len("x", mul("x", m, k)?, x.len())?;
    check_len("w", mul("w", n, k)?, w.len())?;
    check_len("y", mul("y", m, n)?, y.len())?;
    if let Some(bias) = bias {
        check_len("bias", n, bias.len())?;
    }
    Ok(())
}

/// Dense row-major operands over checked slices.
fn operands<E: Elem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[E],
    bias: *const f32,
    y: &mut [f32],
    n: usize,
) -> Operands<E> {
    Operands {
        x: x.as_ptr(),
        ldx: k,
        m,
        w: w.as_ptr(),
        ldw: k,
        k,
        bias,
        y: y.as_mut_ptr(),
        ldy: n,
        chunk: usize::MAX,
        partial_stride: 0,
    }
}

/// Runs columns `0..n` of `op`, split over the pool's threads when the work is worth it.
fn run_parallel<E: Elem>(pool: &CpuPool, op: &Operands<E>, n: usize) {
    let threads = pool.threads();
    let isa = pool.isa();
    let fmas = op.m.saturating_mul(n).saturating_mul(op.k);
    if threads == 1 || fmas < PARALLEL_MIN_FMAS {
        // SAFETY: `op` was built from slices whose lengths `check_shapes` verified, and we
        // are the only thread touching `y`.
        unsafe { gemm_cols(isa, op, 0..n) };
        return;
    }
    pool.run(|thread| {
        let cols = thread_columns(n, threads, thread);
        if !cols.is_empty() {
            // SAFETY: lengths were checked; `thread_columns` gives each thread a disjoint
            // column range, so threads write disjoint elements of y.
            unsafe { gemm_cols(isa, op, cols) };
        }
    });
}

/// Thread `thread`'s contiguous share of `0..n`, in units of [`COLUMN_UNIT`].
pub(crate) fn thread_columns(n: usize, threads: usize, thread: usize) -> Range<usize> {
    let units = n.div_ceil(COLUMN_UNIT);
    let lo = units * thread / threads;
    let hi = units * (thread + 1) / threads;
    (lo * COLUMN_UNIT).min(n)..(hi * COLUMN_UNIT).min(n)
}

/// Computes columns `cols` of every row of `op` on the calling thread with `isa`.
///
/// # Safety
/// `op` must satisfy the [`Operands`] contract for `cols`, and `isa` must be available.
pub(crate) unsafe fn gemm_cols<E: Elem>(isa: Isa, op: &Operands<E>, cols: Range<usize>) {
    match isa {
        Isa::Scalar => for_each_tile(op.m, op.k, cols, scalar::SHAPE, |t| {
            // SAFETY: the tile lies inside rows 0..m and `cols`, covered by our contract.
            unsafe { scalar::tile(op, t) }
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => for_each_tile(op.m, op.k, cols, x86_avx2::SHAPE, |t| {
            // SAFETY: as above; the caller guarantees AVX2 + FMA are available.
            unsafe { x86_avx2::tile(op, t) }
        }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => for_each_tile(op.m, op.k, cols, x86_avx512::SHAPE, |t| {
            // SAFETY: as above; the caller guarantees AVX-512 F/BW/VL + FMA are available.
            unsafe { x86_avx512::tile(op, t) }
        }),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => unreachable!("x86 paths are never available here"),
    }
}

/// Calls `tile` over all of rows `0..m` x `cols`: per block of x rows that
/// fits in L2, for each group of `nr` weight rows, for each group of `mr` x rows.
fn for_each_tile(
    m: usize,
    k: usize,
    cols: Range<usize>,
    shape: TileShape,
    mut tile: impl FnMut(Tile),
) {
    if m == 1 {
        for j in cols.clone().step_by(shape.nr_gemv) {
            let nr = shape.nr_gemv.min(cols.end - j);
            tile(Tile {
                i: 0,
                mr: 1,
                j,
                nr,
                prefetch: true,
            });
        }
        return;
    }
    let block = (X_BLOCK_BYTES / (4 * k.max(1)) / shape.mr * shape.mr).max(shape.mr);
    for i0 in (0..m).step_by(block) {
        let i1 = m.min(i0 + block);
        for j in cols.clone().step_by(shape.nr) {
            let nr = shape.nr.min(cols.end - j);
            for i in (i0..i1).step_by(shape.mr) {
                let mr = shape.mr.min(i1 - i);
                tile(Tile {
                    i,
                    mr,
                    j,
                    nr,
                    prefetch: i == i0,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
