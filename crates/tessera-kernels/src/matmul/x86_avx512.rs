//! AVX-512 tile kernels: one `zmm` per panel (16 outputs at one k), 8 rows x 2 panels for
//! GEMM (16 accumulators), 1 row x 8 panels for GEMV (8 fma chains in flight). bf16 pair panels
//! run on the same tiles, with `vdpbf16ps` where the CPU has AVX-512 BF16 and two fmas per
//! pair where it does not (see [`super::pairs`]).

use std::arch::x86_64::*;

use super::drive::{Shape, TileArgs, PANEL};

/// Tile shape of the AVX-512 path.
pub(crate) const SHAPE: Shape = Shape {
    mr: 8,
    np: 2,
    np_gemv: 8,
};

/// How far ahead (in k) a GEMV prefetches each weight stream, into L2 (`T1`): prefetching
/// into L1 (`T0`) read 10-35% slower, as its misses queue in L1's few fill buffers.
const PREFETCH_K: usize = 24;

/// Calls `$callback!(args..., [shapes])` with the AVX-512 tile shapes (8 x 2 for GEMM,
/// 1 x 8 for GEMV, and every smaller edge), the one list that the f32, bf16 and
/// block-format kernels all dispatch over.
macro_rules! avx512_shapes {
    ($($callback:ident)::+, $($args:tt)*) => {
        $($callback)::+!(
            $($args)*,
            [
                (1, 1),
                (2, 1),
                (3, 1),
                (4, 1),
                (5, 1),
                (6, 1),
                (7, 1),
                (8, 1),
                (1, 2),
                (2, 2),
                (3, 2),
                (4, 2),
                (5, 2),
                (6, 2),
                (7, 2),
                (8, 2),
                (1, 3),
                (1, 4),
                (1, 5),
                (1, 6),
                (1, 7),
                (1, 8)
            ]
        )
    };
}
pub(crate) use avx512_shapes;

/// Dispatches `$kernel::<MR, NP>` over every tile shape of this path.
macro_rules! tile_shapes {
    ($kernel:ident, $w:expr, $a:expr) => {
        avx512_shapes!(super::drive::dispatch_tile, $kernel, $w, $a, "AVX-512")
    };
}

/// Computes one tile's chunk (see [`TileArgs`]).
///
/// # Safety
/// Rows `0..mr` of x hold `k1` floats, panels `0..np` at `w` (`pstride` elements apart)
/// hold `16 k1` elements, `out` has room for `mr * np * 16` floats, `(mr, np)` is within
/// [`SHAPE`], and the CPU has AVX-512 F/BW/VL + FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn tile(w: *const f32, a: &TileArgs) {
    tile_shapes!(tile_fixed, w, a)
}

/// The `MR x NP` tile.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn tile_fixed<const MR: usize, const NP: usize>(w: *const f32, a: &TileArgs) {
    let mut acc = [[_mm512_setzero_ps(); NP]; MR];
    for kk in a.k0..a.k1 {
        let mut wv = [_mm512_setzero_ps(); NP];
        for (p, v) in wv.iter_mut().enumerate() {
            let at = w.wrapping_add(p * a.pstride + kk * PANEL);
            if MR == 1 {
                // Prefetching never faults; `wrapping_add` keeps the address defined.
                _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_K * PANEL).cast());
            }
            // SAFETY: kk < k1, so the 16 weights of panel p at kk are readable.
            *v = unsafe { _mm512_loadu_ps(at) };
        }
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: kk < k1 is inside x row r.
            let xv = _mm512_set1_ps(unsafe { *a.x.add(r * a.ldx + kk) });
            for (s, wc) in acc_row.iter_mut().zip(&wv) {
                *s = _mm512_fmadd_ps(xv, *wc, *s);
            }
        }
    }
    // SAFETY: out has mr * np * 16 floats (contract).
    unsafe { store_tile(&acc, a.out) };
}

/// Computes one tile's chunk over bf16 pair panels (see [`super::pairs`]) with fmas, x
/// rounded as f32 at `a.x`: the path for AVX-512 CPUs without BF16.
///
/// # Safety
/// As [`tile`], for pair panels and rounded rows of `pairs_len(k1)` floats; k0 even.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn tile_pairs(w: *const u16, a: &TileArgs) {
    tile_shapes!(pairs_fma, w, a)
}

/// [`tile_pairs`] with `vdpbf16ps`, x rounded as bf16 pairs at `a.xb`.
///
/// # Safety
/// As [`tile_pairs`], with `a.xb` holding the rows as bf16 and a CPU with AVX-512 BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
pub(crate) unsafe fn tile_pairs_dot(w: *const u16, a: &TileArgs) {
    tile_shapes!(pairs_dot, w, a)
}

/// The `MR x NP` pair tile with two fmas per pair, odd k first.
///
/// # Safety
/// As [`tile_pairs`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn pairs_fma<const MR: usize, const NP: usize>(w: *const u16, a: &TileArgs) {
    let mut acc = [[_mm512_setzero_ps(); NP]; MR];
    let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
    for q in a.k0 / 2..a.k1.div_ceil(2) {
        // SAFETY: pair q of every panel is readable (contract).
        let wv: [__m512i; NP] = unsafe { load_pairs(w, a, q) };
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: 2q + 1 < pairs_len(k1) is inside rounded row r.
            let (xe, xo) = unsafe {
                let row = a.x.add(r * a.ldx + 2 * q);
                (_mm512_set1_ps(*row), _mm512_set1_ps(*row.add(1)))
            };
            for (s, wc) in acc_row.iter_mut().zip(&wv) {
                let odd = _mm512_castsi512_ps(_mm512_and_si512(*wc, high));
                let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(*wc));
                *s = _mm512_fmadd_ps(xe, even, _mm512_fmadd_ps(xo, odd, *s));
            }
        }
    }
    // SAFETY: out has mr * np * 16 floats (contract).
    unsafe { store_tile(&acc, a.out) };
}

/// The `MR x NP` pair tile with `vdpbf16ps` (one instruction per pair: odd k, then even).
///
/// # Safety
/// As [`tile_pairs_dot`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
unsafe fn pairs_dot<const MR: usize, const NP: usize>(w: *const u16, a: &TileArgs) {
    let mut acc = [[_mm512_setzero_ps(); NP]; MR];
    for q in a.k0 / 2..a.k1.div_ceil(2) {
        // SAFETY: pair q of every panel is readable (contract).
        let wv: [__m512i; NP] = unsafe { load_pairs(w, a, q) };
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: pair q is inside rounded row r (2 bf16 = one i32).
            let pair = unsafe { a.xb.add(r * a.ldx + 2 * q).cast::<i32>().read_unaligned() };
            // SAFETY (both transmutes): __m512i and __m512bh are 64 plain bytes alike.
            let xv: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(pair)) };
            for (s, wc) in acc_row.iter_mut().zip(&wv) {
                let wc: __m512bh = unsafe { std::mem::transmute(*wc) };
                *s = _mm512_dpbf16_ps(*s, xv, wc);
            }
        }
    }
    // SAFETY: out has mr * np * 16 floats (contract).
    unsafe { store_tile(&acc, a.out) };
}

/// Loads pair `q` of panels `0..NP` (prefetching ahead when the tile is one row).
///
/// # Safety
/// Pair q of every panel must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load_pairs<const NP: usize>(w: *const u16, a: &TileArgs, q: usize) -> [__m512i; NP] {
    let mut wv = [_mm512_setzero_si512(); NP];
    for (p, v) in wv.iter_mut().enumerate() {
        let at = w.wrapping_add(p * a.pstride + q * 2 * PANEL);
        if a.mr == 1 {
            // Prefetching never faults; `wrapping_add` keeps the address defined.
            _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_K * PANEL).cast());
        }
        // SAFETY: 32 bf16 of pair q (caller's contract).
        *v = unsafe { _mm512_loadu_si512(at.cast()) };
    }
    wv
}

/// Stores an `MR x NP` tile of accumulators to `out` (row-major, 16 per panel).
///
/// # Safety
/// `out` must have room for `MR * NP * 16` floats.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn store_tile<const MR: usize, const NP: usize>(acc: &[[__m512; NP]; MR], out: *mut f32) {
    for (r, acc_row) in acc.iter().enumerate() {
        for (p, s) in acc_row.iter().enumerate() {
            // SAFETY: inside MR * NP * 16 floats (caller's contract).
            unsafe { _mm512_storeu_ps(out.add((r * NP + p) * PANEL), *s) };
        }
    }
}
