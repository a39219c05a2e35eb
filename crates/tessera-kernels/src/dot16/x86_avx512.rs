//! AVX-512 tile kernel: one `zmm` (16 lanes) per output element, 4 x 4 tiles, 1 x 4 for
//! GEMV (1 x 8 read 10-30% slower with two threads: its prefetch ran twice as far ahead).

use std::arch::x86_64::*;

use super::{Operands, Tile, TileShape};
use crate::matmul::Elem;

/// Tile shape of the AVX-512 path (16 accumulators + 4 x rows + 4 w rows = 24 of 32 zmm).
pub(crate) const SHAPE: TileShape = TileShape {
    mr: 4,
    nr: 4,
    nr_gemv: 4,
};

/// Computes the `mr x nr` outputs at (row `i`, column `j`) of `op`.
///
/// # Safety
/// Rows `i..i+mr` and columns `j..j+nr` must lie inside what `op`'s contract covers,
/// (mr, nr) must be a tile of [`SHAPE`], and the CPU must have AVX-512 F/BW/VL + FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn tile<E: Elem>(op: &Operands<E>, t: Tile) {
    macro_rules! dispatch {
        ($(($a:literal, $b:literal)),* $(,)?) => {
            match (t.mr, t.nr) {
                // SAFETY: forwarded from our own contract.
                $(($a, $b) => unsafe { tile_fixed::<E, $a, $b>(op, t) },)*
                _ => unreachable!("tile {}x{} is not an AVX-512 tile shape", t.mr, t.nr),
            }
        };
    }
    dispatch!(
        (1, 1),
        (1, 2),
        (1, 3),
        (1, 4),
        (2, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (3, 1),
        (3, 2),
        (3, 3),
        (3, 4),
        (4, 1),
        (4, 2),
        (4, 3),
        (4, 4),
    );
}

/// Loads 16 weights at `p` as f32 (bf16 is zero-extended and shifted into the high half).
///
/// # Safety
/// 16 elements at `p` must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn load_w<E: Elem>(p: *const E) -> __m512 {
    if E::IS_BF16 {
        // SAFETY: 16 bf16 = 32 readable bytes at p (caller's contract).
        let raw = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: 16 f32 readable at p (caller's contract).
        unsafe { _mm512_loadu_ps(p.cast()) }
    }
}

/// Like [`load_w`] for the lanes in `mask`; other lanes read nothing and are zero.
///
/// # Safety
/// The masked-in elements at `p` must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load_w_masked<E: Elem>(p: *const E, mask: __mmask16) -> __m512 {
    if E::IS_BF16 {
        // SAFETY: masked loads do not touch (or fault on) masked-off elements.
        let raw = unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: as above.
        unsafe { _mm512_maskz_loadu_ps(mask, p.cast()) }
    }
}

/// The fixed tree over one accumulator: lanes l+8, then l+4, l+2, l+1 (low lane first).
#[inline]
#[target_feature(enable = "avx512f,avx2")]
pub(crate) fn tree_sum(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    super::x86_avx2::tree_sum8(_mm256_add_ps(lo, hi))
}

/// [`tree_sum`] of 16 accumulators at once: lane `c * 4 + r` of the result is the tree sum
/// of `acc[r * 4 + c]`, with exactly the adds of the one-accumulator tree (lanes l and l+8,
/// then l+4, l+2, l+1), only their operands travel together through shuffles.
#[inline]
#[target_feature(enable = "avx512f")]
fn tree_sum16(acc: &[__m512; 16]) -> __m512 {
    // l + (l+8): pairs of accumulators, 128-bit quarters 0,1 against 2,3.
    let mut s8 = [_mm512_setzero_ps(); 8];
    for (k, out) in s8.iter_mut().enumerate() {
        let (a, b) = (acc[2 * k], acc[2 * k + 1]);
        *out = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        );
    }
    // l + (l+4): quarters 0,2 against 1,3 of two such vectors.
    let mut s4 = [_mm512_setzero_ps(); 4];
    for (k, out) in s4.iter_mut().enumerate() {
        let (a, b) = (s8[2 * k], s8[2 * k + 1]);
        *out = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        );
    }
    // l + (l+2) inside each quarter.
    let mut s2 = [_mm512_setzero_ps(); 2];
    for (k, out) in s2.iter_mut().enumerate() {
        let (a, b) = (s4[2 * k], s4[2 * k + 1]);
        *out = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
        );
    }
    // l + (l+1).
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(s2[0], s2[1]),
        _mm512_shuffle_ps::<0b11_01_11_01>(s2[0], s2[1]),
    )
}

/// [`tree_sum16`] of a tile's accumulators (MR, NR <= 4): lane `c * 4 + r` is the tree sum
/// of `acc[r][c]`; lanes of accumulators the tile lacks sum zeros.
#[inline]
#[target_feature(enable = "avx512f")]
fn tile_sums<const MR: usize, const NR: usize>(acc: &[[__m512; NR]; MR]) -> __m512 {
    let mut flat = [_mm512_setzero_ps(); 16];
    for (r, acc_row) in acc.iter().enumerate() {
        for (c, a) in acc_row.iter().enumerate() {
            flat[r * 4 + c] = *a;
        }
    }
    tree_sum16(&flat)
}

/// The `MR x NR` tile at (row `i`, column `j`).
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn tile_fixed<E: Elem, const MR: usize, const NR: usize>(op: &Operands<E>, t: Tile) {
    let (k, i, j) = (op.k, t.i, t.j);
    // SAFETY: row i and weight row j are inside the covered ranges (caller's contract).
    let (x, w) = unsafe { (op.x.add(i * op.ldx), op.w.add(j * op.ldw)) };
    // Prefetching never faults, and `wrapping_add` keeps the address computation defined
    // even past the end of the weights.
    let next = w.wrapping_add(NR * op.ldw);
    let mut total = [[0.0f32; NR]; MR];
    let mut total16 = _mm512_setzero_ps();
    let mut wv = [_mm512_setzero_ps(); NR];
    let (mut c0, mut ci) = (0, 0);
    loop {
        let c1 = super::chunk_end(op.chunk, k, c0);
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        let mut k0 = c0;
        while k0 + 16 <= c1 {
            if t.prefetch {
                for c in 0..NR {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(c * op.ldw + k0).cast());
                }
            }
            for (c, v) in wv.iter_mut().enumerate() {
                // SAFETY: k0 + 16 <= k, so 16 elements of weight row j+c are readable.
                *v = unsafe { load_w(w.add(c * op.ldw + k0)) };
            }
            for (r, acc_row) in acc.iter_mut().enumerate() {
                // SAFETY: as above, for x row i+r.
                let xv = unsafe { _mm512_loadu_ps(x.add(r * op.ldx + k0)) };
                for (a, wc) in acc_row.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(xv, *wc, *a);
                }
            }
            k0 += 16;
        }
        if k0 < c1 {
            // The short last chunk: masked-off lanes keep their accumulator bits exactly.
            let mask: __mmask16 = ((1u32 << (c1 - k0)) - 1) as __mmask16;
            for (c, v) in wv.iter_mut().enumerate() {
                // SAFETY: the c1 - k0 masked-in elements are inside weight row j+c.
                *v = unsafe { load_w_masked(w.add(c * op.ldw + k0), mask) };
            }
            for (r, acc_row) in acc.iter_mut().enumerate() {
                // SAFETY: as above, for x row i+r.
                let xv = unsafe { _mm512_maskz_loadu_ps(mask, x.add(r * op.ldx + k0)) };
                for (a, wc) in acc_row.iter_mut().zip(&wv) {
                    *a = _mm512_mask3_fmadd_ps(xv, *wc, *a, mask);
                }
            }
        }
        // SAFETY: the tile is inside what our caller covers.
        unsafe { take_chunk(op, t, ci, &acc, &mut total, &mut total16) };
        ci += 1;
        c0 = c1;
        if c0 >= k {
            break;
        }
    }
    if MR == 4 && NR == 4 && op.partial_stride == 0 {
        let mut out = [0.0f32; 16];
        // SAFETY: 16 floats fit in `out`.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), total16) };
        for (r, total_row) in total.iter_mut().enumerate() {
            for (c, tot) in total_row.iter_mut().enumerate() {
                *tot = out[c * 4 + r];
            }
        }
    }
    // SAFETY: the tile is inside what our caller covers.
    unsafe { super::store_folded(op, i, j, &total, MR, NR) };
}

/// Reduces chunk `ci`'s accumulators of the `MR x NR` tile at `t` into its totals (a
/// full 4x4 tile into `total16`, transposed) or, with partial slabs, stores them there.
/// Runs once per chunk, outside the multiply-add loop.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn take_chunk<E: Elem, const MR: usize, const NR: usize>(
    op: &Operands<E>,
    t: Tile,
    ci: usize,
    acc: &[[__m512; NR]; MR],
    total: &mut [[f32; NR]; MR],
    total16: &mut __m512,
) {
    let (i, j) = (t.i, t.j);
    if MR == 4 && NR == 4 {
        // A full tile reduces its 16 accumulators together (same adds, fewer shuffles).
        let sums = tile_sums(acc);
        if op.partial_stride != 0 {
            let mut out = [0.0f32; 16];
            // SAFETY: 16 floats fit in `out`.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sums) };
            for r in 0..4 {
                for c in 0..4 {
                    // SAFETY: chunk ci's slab holds this (row, column) (Operands contract).
                    unsafe {
                        *op.y.add(ci * op.partial_stride + (i + r) * op.ldy + j + c) =
                            out[c * 4 + r]
                    };
                }
            }
        } else if ci == 0 {
            *total16 = sums;
        } else {
            *total16 = _mm512_add_ps(*total16, sums);
        }
    } else if MR * NR >= 8 {
        // A partial tile of 8 or more (e.g. a decode row's 3 heads against 4 keys) reduces its
        // accumulators together too.
        let mut out = [0.0f32; 16];
        // SAFETY: 16 floats fit in `out`.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), tile_sums(acc)) };
        for (r, total_row) in total.iter_mut().enumerate() {
            for (c, tot) in total_row.iter_mut().enumerate() {
                // SAFETY: (i + r, j + c) is inside this tile, which our caller covers.
                unsafe { super::take_chunk_sum(op, ci, i + r, j + c, out[c * 4 + r], tot) };
            }
        }
    } else {
        for (r, (acc_row, total_row)) in acc.iter().zip(total.iter_mut()).enumerate() {
            for (c, (a, tot)) in acc_row.iter().zip(total_row.iter_mut()).enumerate() {
                let s = tree_sum(*a);
                // SAFETY: (i + r, j + c) is inside this tile, which our caller covers.
                unsafe { super::take_chunk_sum(op, ci, i + r, j + c, s, tot) };
            }
        }
    }
}
