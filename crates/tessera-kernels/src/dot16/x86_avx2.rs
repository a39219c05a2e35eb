//! AVX2 + FMA tile kernel: each 16-lane accumulator is two `ymm` (lanes 0-7 and 8-15),
//! 3 x 2 tiles (12 of 16 ymm), 1 x 4 for GEMV.

use std::arch::x86_64::*;

use super::{Operands, Tile, TileShape};
use crate::matmul::Elem;

/// Tile shape of the AVX2 path.
pub(crate) const SHAPE: TileShape = TileShape {
    mr: 3,
    nr: 2,
    nr_gemv: 4,
};

/// Computes the `mr x nr` outputs at (row `i`, column `j`) of `op`.
///
/// # Safety
/// Rows `i..i+mr` and columns `j..j+nr` must lie inside what `op`'s contract covers,
/// (mr, nr) must be a tile of [`SHAPE`], and the CPU must have AVX2 + FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn tile<E: Elem>(op: &Operands<E>, t: Tile) {
    macro_rules! dispatch {
        ($(($a:literal, $b:literal)),* $(,)?) => {
            match (t.mr, t.nr) {
                // SAFETY: forwarded from our own contract.
                $(($a, $b) => unsafe { tile_fixed::<E, $a, $b>(op, t) },)*
                _ => unreachable!("tile {}x{} is not an AVX2 tile shape", t.mr, t.nr),
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
        (3, 1),
        (3, 2)
    );
}

/// Loads 8 weights at `p` as f32 (bf16 is zero-extended and shifted into the high half).
///
/// # Safety
/// 8 elements at `p` must be readable.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn load_w<E: Elem>(p: *const E) -> __m256 {
    if E::IS_BF16 {
        // SAFETY: 8 bf16 = 16 readable bytes at p (caller's contract).
        let raw = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: 8 f32 readable at p (caller's contract).
        unsafe { _mm256_loadu_ps(p.cast()) }
    }
}

/// The fixed tree over lanes 0-7 that remain after lanes l and l+8 were summed:
/// l and l+4, then l+2, then l+1 (low lane first).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn tree_sum8(s8: __m256) -> f32 {
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
    _mm_cvtss_f32(s1)
}

/// All-ones in lanes `l` with `first + l < valid`, zero elsewhere.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn lane_mask(first: usize, valid: usize) -> __m256 {
    let remaining = valid.saturating_sub(first).min(8) as i32;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(remaining), lanes))
}

/// The `MR x NR` tile at (row `i`, column `j`).
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_fixed<E: Elem, const MR: usize, const NR: usize>(op: &Operands<E>, t: Tile) {
    let (k, i, j) = (op.k, t.i, t.j);
    // SAFETY: row i and weight row j are inside the covered ranges (caller's contract).
    let (x, w) = unsafe { (op.x.add(i * op.ldx), op.w.add(j * op.ldw)) };
    // Prefetching never faults, and `wrapping_add` keeps the address computation defined
    // even past the end of the weights.
    let next = w.wrapping_add(NR * op.ldw);
    let mut total = [[0.0f32; NR]; MR];
    let mut wv = [_mm256_setzero_ps(); NR];
    let (mut c0, mut ci) = (0, 0);
    loop {
        let c1 = super::chunk_end(op.chunk, k, c0);
        let mut acc = [[[_mm256_setzero_ps(); 2]; NR]; MR];
        let mut k0 = c0;
        while k0 + 16 <= c1 {
            if t.prefetch {
                for c in 0..NR {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(c * op.ldw + k0).cast());
                }
            }
            for half in 0..2 {
                let at = k0 + 8 * half;
                for (c, v) in wv.iter_mut().enumerate() {
                    // SAFETY: at + 8 <= k, so 8 elements of weight row j+c are readable.
                    *v = unsafe { load_w(w.add(c * op.ldw + at)) };
                }
                for (r, acc_row) in acc.iter_mut().enumerate() {
                    // SAFETY: as above, for x row i+r.
                    let xv = unsafe { _mm256_loadu_ps(x.add(r * op.ldx + at)) };
                    for (a, wc) in acc_row.iter_mut().zip(&wv) {
                        a[half] = _mm256_fmadd_ps(xv, *wc, a[half]);
                    }
                }
            }
            k0 += 16;
        }
        if k0 < c1 {
            // The short last chunk, through zero-padded copies; a blend then restores the
            // accumulator bits of the missing lanes exactly (fma with 0 could turn -0 into +0).
            let valid = c1 - k0;
            let mut xbuf = [[0.0f32; 16]; MR];
            for (r, buf) in xbuf.iter_mut().enumerate() {
                // SAFETY: the `valid` elements after k0 are inside x row i+r.
                let src = unsafe { std::slice::from_raw_parts(x.add(r * op.ldx + k0), valid) };
                buf[..valid].copy_from_slice(src);
            }
            let mut wbuf = [[E::default(); 16]; NR];
            for (c, buf) in wbuf.iter_mut().enumerate() {
                // SAFETY: the `valid` elements after k0 are inside weight row j+c.
                let src = unsafe { std::slice::from_raw_parts(w.add(c * op.ldw + k0), valid) };
                buf[..valid].copy_from_slice(src);
            }
            for half in 0..2 {
                let mask = lane_mask(8 * half, valid);
                for (c, v) in wv.iter_mut().enumerate() {
                    // SAFETY: the buffer holds 16 elements.
                    *v = unsafe { load_w(wbuf[c].as_ptr().add(8 * half)) };
                }
                for (acc_row, xb) in acc.iter_mut().zip(&xbuf) {
                    // SAFETY: the buffer holds 16 floats.
                    let xv = unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * half)) };
                    for (a, wc) in acc_row.iter_mut().zip(&wv) {
                        let fused = _mm256_fmadd_ps(xv, *wc, a[half]);
                        a[half] = _mm256_blendv_ps(a[half], fused, mask);
                    }
                }
            }
        }
        for (r, (acc_row, total_row)) in acc.iter().zip(total.iter_mut()).enumerate() {
            for (c, (a, tot)) in acc_row.iter().zip(total_row.iter_mut()).enumerate() {
                let s = tree_sum8(_mm256_add_ps(a[0], a[1]));
                // SAFETY: (i + r, j + c) is inside this tile, which our caller covers.
                unsafe { super::take_chunk_sum(op, ci, i + r, j + c, s, tot) };
            }
        }
        ci += 1;
        c0 = c1;
        if c0 >= k {
            break;
        }
    }
    // SAFETY: the tile is inside what our caller covers.
    unsafe { super::store_folded(op, i, j, &total, MR, NR) };
}
