//! AVX-512 tile kernels: one `zmm` per panel (16 outputs at one k), 8 rows x 2 panels for
//! GEMM (16 accumulators), 1 row x 8 panels for GEMV (8 fma chains in flight), and the
//! GEMV over quantized panels that decodes 16 weights per k in registers.

use std::arch::x86_64::*;

use super::drive::{Shape, TileArgs, PANEL};
use super::Elem;
use crate::quant::{BlockFormat, BLOCK};

/// Tile shape of the AVX-512 path.
pub(crate) const SHAPE: Shape = Shape {
    mr: 8,
    np: 2,
    np_gemv: 8,
};

/// How far ahead (in k) a GEMV prefetches each weight stream.
const PREFETCH_K: usize = 24;

/// Computes one tile's chunk (see [`TileArgs`]).
///
/// # Safety
/// Rows `0..mr` of x hold `k1` floats, panels `0..np` at `w` (`pstride` elements apart)
/// hold `16 k1` elements, `out` has room for `mr * np * 16` floats, `(mr, np)` is within
/// [`SHAPE`], and the CPU has AVX-512 F/BW/VL + FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn tile<E: Elem>(w: *const E, a: &TileArgs) {
    macro_rules! dispatch {
        ($(($r:literal, $p:literal)),* $(,)?) => {
            match (a.mr, a.np) {
                // SAFETY: forwarded from our own contract.
                $(($r, $p) => unsafe { tile_fixed::<E, $r, $p>(w, a) },)*
                _ => unreachable!("tile {}x{} is not an AVX-512 tile shape", a.mr, a.np),
            }
        };
    }
    dispatch!(
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
    );
}

/// Loads the 16 weights at `p` as f32 (bf16 is zero-extended and shifted into the high half).
///
/// # Safety
/// 16 elements at `p` must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load_w<E: Elem>(p: *const E) -> __m512 {
    if E::IS_BF16 {
        // SAFETY: 16 bf16 = 32 readable bytes at p (caller's contract).
        let raw = unsafe { _mm256_loadu_si256(p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: 16 f32 readable at p (caller's contract).
        unsafe { _mm512_loadu_ps(p.cast()) }
    }
}

/// The `MR x NP` tile.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn tile_fixed<E: Elem, const MR: usize, const NP: usize>(w: *const E, a: &TileArgs) {
    let mut acc = [[_mm512_setzero_ps(); NP]; MR];
    for kk in a.k0..a.k1 {
        let mut wv = [_mm512_setzero_ps(); NP];
        for (p, v) in wv.iter_mut().enumerate() {
            let at = w.wrapping_add(p * a.pstride + kk * PANEL);
            if MR == 1 {
                // Prefetching never faults; `wrapping_add` keeps the address defined.
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_K * PANEL).cast());
            }
            // SAFETY: kk < k1, so the 16 weights of panel p at kk are readable.
            *v = unsafe { load_w(at) };
        }
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: kk < k1 is inside x row r.
            let xv = _mm512_set1_ps(unsafe { *a.x.add(r * a.ldx + kk) });
            for (s, wc) in acc_row.iter_mut().zip(&wv) {
                *s = _mm512_fmadd_ps(xv, *wc, *s);
            }
        }
    }
    for (r, acc_row) in acc.iter().enumerate() {
        for (p, s) in acc_row.iter().enumerate() {
            // SAFETY: out has mr * np * 16 floats.
            unsafe { _mm512_storeu_ps(a.out.add((r * NP + p) * PANEL), *s) };
        }
    }
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
            _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(2 * block_bytes).cast());
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
                    let mut v = _mm512_cvtepu8_epi32(raw);
                    if j >= 16 {
                        v = _mm512_srli_epi32::<4>(v);
                    }
                    v = _mm512_and_si512(v, _mm512_set1_epi32(0xF));
                    if F == 1 {
                        v = _mm512_sub_epi32(v, _mm512_set1_epi32(8));
                        _mm512_mul_ps(_mm512_cvtepi32_ps(v), d[p])
                    } else {
                        _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), d[p]), m[p])
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
