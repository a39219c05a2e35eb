//! AVX2 + FMA tile kernels: a panel is two `ymm` (outputs 0-7, 8-15), 6 rows x 1 panel for
//! GEMM (12 accumulators of 16 ymm), 1 row x 4 panels for GEMV (8 fma chains in flight),
//! and the same tiles over bf16 pair panels (two fmas per pair, see [`super::pairs`]).

use std::arch::x86_64::*;

use super::drive::{Shape, TileArgs, PANEL};

/// Tile shape of the AVX2 path.
pub(crate) const SHAPE: Shape = Shape {
    mr: 6,
    np: 1,
    np_gemv: 4,
};

/// How far ahead (in k) a GEMV prefetches each weight stream, into L2 (`T1`): prefetching
/// into L1 (`T0`) read 10-35% slower, as its misses queue in L1's few fill buffers. The bf16
/// pair GEMV keeps `T0`: `T1` showed no gain there.
const PREFETCH_K: usize = 24;

/// Dispatches `$kernel::<MR, NP>` over every tile shape of this path.
macro_rules! tile_shapes {
    ($kernel:ident, $w:expr, $a:expr) => {
        super::drive::dispatch_tile!(
            $kernel,
            $w,
            $a,
            "AVX2",
            [
                (1, 1),
                (2, 1),
                (3, 1),
                (4, 1),
                (5, 1),
                (6, 1),
                (1, 2),
                (1, 3),
                (1, 4),
            ]
        )
    };
}

/// Computes one tile's chunk (see [`TileArgs`]).
///
/// # Safety
/// Rows `0..mr` of x hold `k1` floats, panels `0..np` at `w` (`pstride` elements apart)
/// hold `16 k1` elements, `out` has room for `mr * np * 16` floats, `(mr, np)` is within
/// [`SHAPE`], and the CPU has AVX2 + FMA + F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile(w: *const f32, a: &TileArgs) {
    tile_shapes!(tile_fixed, w, a)
}

/// The `MR x NP` tile.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_fixed<const MR: usize, const NP: usize>(w: *const f32, a: &TileArgs) {
    let mut acc = [[[_mm256_setzero_ps(); 2]; NP]; MR];
    for kk in a.k0..a.k1 {
        let mut wv = [[_mm256_setzero_ps(); 2]; NP];
        for (p, v) in wv.iter_mut().enumerate() {
            let at = w.wrapping_add(p * a.pstride + kk * PANEL);
            if MR == 1 {
                // Prefetching never faults; `wrapping_add` keeps the address defined.
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_K * PANEL).cast());
            }
            // SAFETY: kk < k1, so the 16 weights of panel p at kk are readable.
            *v = unsafe { [_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8))] };
        }
        // SAFETY: kk < k1 is inside every x row.
        unsafe { fma_rows(&mut acc, a, kk, &wv) };
    }
    // SAFETY: out has mr * np * 16 floats (contract).
    unsafe { store_tile(&acc, a.out) };
}

/// Computes one tile's chunk over bf16 pair panels (see [`super::pairs`]): a panel's pair
/// is two `ymm` of 8 pairs, split into odd and even weights, x rounded as f32 at `a.x`.
///
/// # Safety
/// As [`tile`], for pair panels and rounded rows of `pairs_len(k1)` floats; k0 even.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile_pairs(w: *const u16, a: &TileArgs) {
    tile_shapes!(pairs_fixed, w, a)
}

/// The `MR x NP` pair tile: two fmas per pair, odd k first.
///
/// # Safety
/// As [`tile_pairs`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pairs_fixed<const MR: usize, const NP: usize>(w: *const u16, a: &TileArgs) {
    let mut acc = [[[_mm256_setzero_ps(); 2]; NP]; MR];
    let high = _mm256_set1_epi32(0xffff_0000_u32 as i32);
    for q in a.k0 / 2..a.k1.div_ceil(2) {
        // Odd k for every row, then even k: each accumulator still sees its pair odd
        // first, and only one weight pair and one broadcast are live beside the 12
        // accumulators of a 6-row tile.
        for odd in [true, false] {
            let mut wv = [[_mm256_setzero_ps(); 2]; NP];
            for (p, v) in wv.iter_mut().enumerate() {
                let at = w.wrapping_add(p * a.pstride + q * 2 * PANEL);
                if MR == 1 && odd {
                    // Prefetching never faults; `wrapping_add` keeps the address defined.
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_K * PANEL).cast());
                }
                for (h, v) in v.iter_mut().enumerate() {
                    // SAFETY: pair q of panel p (32 bf16) is readable; h picks 8 outputs.
                    let raw = unsafe { _mm256_loadu_si256(at.add(h * PANEL).cast()) };
                    *v = _mm256_castsi256_ps(if odd {
                        _mm256_and_si256(raw, high)
                    } else {
                        _mm256_slli_epi32::<16>(raw)
                    });
                }
            }
            // SAFETY: 2q + 1 < pairs_len(k1) is inside every rounded row.
            unsafe { fma_rows(&mut acc, a, 2 * q + usize::from(odd), &wv) };
        }
    }
    // SAFETY: out has mr * np * 16 floats (contract).
    unsafe { store_tile(&acc, a.out) };
}

/// One k of a tile: every accumulator of row r gains `x[r][col] * w` (one fma per ymm).
///
/// # Safety
/// Column `col` must be inside rows `0..MR` of x (`a.x`, `a.ldx` apart).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_rows<const MR: usize, const NP: usize>(
    acc: &mut [[[__m256; 2]; NP]; MR],
    a: &TileArgs,
    col: usize,
    wv: &[[__m256; 2]; NP],
) {
    for (r, acc_row) in acc.iter_mut().enumerate() {
        // SAFETY: inside row r (caller's contract).
        let xv = _mm256_set1_ps(unsafe { *a.x.add(r * a.ldx + col) });
        for (s, wc) in acc_row.iter_mut().zip(wv) {
            s[0] = _mm256_fmadd_ps(xv, wc[0], s[0]);
            s[1] = _mm256_fmadd_ps(xv, wc[1], s[1]);
        }
    }
}

/// Stores an `MR x NP` tile of accumulators to `out` (row-major, 16 per panel).
///
/// # Safety
/// `out` must have room for `MR * NP * 16` floats.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_tile<const MR: usize, const NP: usize>(
    acc: &[[[__m256; 2]; NP]; MR],
    out: *mut f32,
) {
    for (r, acc_row) in acc.iter().enumerate() {
        for (p, s) in acc_row.iter().enumerate() {
            let at = (r * NP + p) * PANEL;
            // SAFETY: inside MR * NP * 16 floats (caller's contract).
            unsafe {
                _mm256_storeu_ps(out.add(at), s[0]);
                _mm256_storeu_ps(out.add(at + 8), s[1]);
            }
        }
    }
}
