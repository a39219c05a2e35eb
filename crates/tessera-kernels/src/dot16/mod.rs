//! The 16-lane dot-product order used by attention scores and norms: 16 lane accumulators
//! over k (fma per lane), then a fixed tree over the lanes.
//!
//! ```text
//!  k:     0 ........ 15 | 16 ....... 31 | ... | 16c ... k-1 (short chunk)
//!  lane:  0 ........ 15 | 0 ........ 15 | ... | 0 .. r-1   (lanes r..15 untouched)
//!         acc[l] = fma(x[k0+l], w[k0+l], acc[l])   for k0 = 0, 16, 32, ...
//!  then lanes l and l+8, l and l+4, l and l+2, l and l+1 (low lane first).
//! ```
//!
//! It was the matmul's order before the matmul moved to packed panels (see `matmul`); the
//! attention kernels keep it, so their results are unchanged. Register tiles only choose
//! which accumulators live together, never the order an accumulator sees.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

#[cfg(target_arch = "x86_64")]
pub(crate) use x86_avx2::{lane_mask, load_w as load8, tree_sum8};
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_avx512::{load_w as load16, tree_sum as tree_sum_zmm};

use std::ops::Range;

use crate::isa::Isa;
use crate::matmul::Elem;

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
        Isa::Avx512 | Isa::Avx512Bf16 => for_each_tile(op.m, op.k, cols, x86_avx512::SHAPE, |t| {
            // SAFETY: as above; the caller guarantees AVX-512 F/BW/VL + FMA are available.
            unsafe { x86_avx512::tile(op, t) }
        }),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16 => {
            unreachable!("x86 paths are never available here")
        }
    }
}

/// Bytes of x a row block may occupy, so the block stays in L2 while w streams past it.
const X_BLOCK_BYTES: usize = 192 * 1024;

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
