//! AVX-512 tile kernels: one `zmm` per panel (16 outputs at one k), 8 rows x 2 panels for
//! GEMM (16 accumulators), 1 row x 8 panels for GEMV (8 fma chains in flight), and the
//! GEMV over quantized panels that decodes 16 weights per k in registers. bf16 pair panels
//! run on the same tiles, with `vdpbf16ps` where the CPU has AVX-512 BF16 and two fmas per
//! pair where it does not (see [`super::pairs`]).

use std::arch::x86_64::*;

use super::drive::{Shape, TileArgs, PANEL};
use crate::quant::{BlockFormat, BLOCK};

/// Tile shape of the AVX-512 path.
pub(crate) const SHAPE: Shape = Shape {
    mr: 8,
    np: 2,
    np_gemv: 8,
};

/// How far ahead (in k) a GEMV prefetches each weight stream, into L2 (`T1`): prefetching
/// into L1 (`T0`) read 10-35% slower, as its misses queue in L1's few fill buffers.
const PREFETCH_K: usize = 24;

/// Dispatches `$kernel::<MR, NP>` over every tile shape of this path.
macro_rules! tile_shapes {
    ($kernel:ident, $w:expr, $a:expr) => {
        super::drive::dispatch_tile!(
            $kernel,
            $w,
            $a,
            "AVX-512",
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
                (1, 8),
            ]
        )
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

/// GEMV chunk over quantized panels (`a.mr == 1`, `pstride` in bytes), decoding each k's
/// 16 weights in registers exactly as [`crate::quant::decode_panel`] does.
///
/// # Safety
/// As [`tile`] with quantized panels of format `f` (k1 within the panels' k), mr = 1.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn gemv_blocks(f: BlockFormat, w: *const u8, a: &TileArgs) {
    macro_rules! dispatch {
        ($($p:literal),*) => {
            match (f, a.np) {
                // SAFETY (all arms): forwarded from our own contract.
                $((BlockFormat::Q8_0, $p) => unsafe { gemv_fixed::<0, $p>(w, a) },
                  (BlockFormat::Q4_0, $p) => unsafe { gemv_fixed::<1, $p>(w, a) },
                  (BlockFormat::Q4_1, $p) => unsafe { gemv_fixed::<2, $p>(w, a) },)*
                _ => unreachable!("{} panels is not an AVX-512 GEMV shape", a.np),
            }
        };
    }
    dispatch!(1, 2, 3, 4, 5, 6, 7, 8);
}

/// [`gemv_blocks`] for format `F` (0: Q8_0, 1: Q4_0, 2: Q4_1) and `NP` panels.
///
/// # Safety
/// As [`gemv_blocks`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn gemv_fixed<const F: u8, const NP: usize>(w: *const u8, a: &TileArgs) {
    let fmt = [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1][F as usize];
    let (block_bytes, quants_at) = (fmt.panel_block_bytes(), fmt.panel_quants_at());
    let mut acc = [_mm512_setzero_ps(); NP];
    let mut kk = a.k0;
    while kk < a.k1 {
        let b = kk / BLOCK;
        let end = a.k1.min((b + 1) * BLOCK);
        let mut d = [_mm512_setzero_ps(); NP];
        let mut m = [_mm512_setzero_ps(); NP];
        let mut q = [std::ptr::null::<u8>(); NP];
        for p in 0..NP {
            let base = w.wrapping_add(p * a.pstride + b * block_bytes);
            // SAFETY: block b of panel p is inside the panels (b < k1 / 32 rounded up).
            d[p] = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(base.cast()) });
            if F == 2 {
                // SAFETY: Q4_1 blocks hold 16 mins after the 16 scales.
                m[p] = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(base.add(32).cast()) });
            }
            q[p] = base.wrapping_add(quants_at);
            _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(2 * block_bytes).cast());
        }
        for kk in kk..end {
            let j = kk % BLOCK;
            // SAFETY: kk < k1 is inside x's row.
            let xv = _mm512_set1_ps(unsafe { *a.x.add(kk) });
            for p in 0..NP {
                let wv = if F == 0 {
                    // SAFETY: 32 rows of 16 quants follow the scales.
                    let raw = unsafe { _mm_loadu_si128(q[p].add(j * 16).cast()) };
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), d[p])
                } else {
                    // SAFETY: 16 rows of 16 nibble pairs follow the scales (and mins).
                    let raw = unsafe { _mm_loadu_si128(q[p].add((j % 16) * 16).cast()) };
                    let v = _mm512_cvtepu8_epi32(raw);
                    // Zero-extended bytes: the high nibble needs only the shift.
                    let mut v = if j >= 16 {
                        _mm512_srli_epi32::<4>(v)
                    } else {
                        _mm512_and_si512(v, _mm512_set1_epi32(0xF))
                    };
                    if F == 1 {
                        v = _mm512_sub_epi32(v, _mm512_set1_epi32(8));
                        _mm512_mul_ps(_mm512_cvtepi32_ps(v), d[p])
                    } else {
                        // q * d is exact, so the fused form rounds (and signs zeros)
                        // exactly as multiply-then-add.
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), d[p], m[p])
                    }
                };
                acc[p] = _mm512_fmadd_ps(xv, wv, acc[p]);
            }
        }
        kk = end;
    }
    for (p, s) in acc.iter().enumerate() {
        // SAFETY: out has np * 16 floats.
        unsafe { _mm512_storeu_ps(a.out.add(p * PANEL), *s) };
    }
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
