//! AVX2 + FMA tile kernels: a panel is two `ymm` (outputs 0-7, 8-15), 6 rows x 1 panel for
//! GEMM (12 accumulators of 16 ymm), 1 row x 4 panels for GEMV (8 fma chains in flight),
//! and the GEMV over quantized panels (scales widened with F16C).

use std::arch::x86_64::*;

use super::drive::{Shape, TileArgs, PANEL};
use super::Elem;
use crate::quant::{BlockFormat, BLOCK};

/// Tile shape of the AVX2 path.
pub(crate) const SHAPE: Shape = Shape {
    mr: 6,
    np: 1,
    np_gemv: 4,
};

/// How far ahead (in k) a GEMV prefetches each weight stream.
const PREFETCH_K: usize = 24;

/// Computes one tile's chunk (see [`TileArgs`]).
///
/// # Safety
/// Rows `0..mr` of x hold `k1` floats, panels `0..np` at `w` (`pstride` elements apart)
/// hold `16 k1` elements, `out` has room for `mr * np * 16` floats, `(mr, np)` is within
/// [`SHAPE`], and the CPU has AVX2 + FMA + F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn tile<E: Elem>(w: *const E, a: &TileArgs) {
    macro_rules! dispatch {
        ($(($r:literal, $p:literal)),* $(,)?) => {
            match (a.mr, a.np) {
                // SAFETY: forwarded from our own contract.
                $(($r, $p) => unsafe { tile_fixed::<E, $r, $p>(w, a) },)*
                _ => unreachable!("tile {}x{} is not an AVX2 tile shape", a.mr, a.np),
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
        (1, 2),
        (1, 3),
        (1, 4),
    );
}

/// Loads 8 weights at `p` as f32 (bf16 is zero-extended and shifted into the high half).
///
/// # Safety
/// 8 elements at `p` must be readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_w<E: Elem>(p: *const E) -> __m256 {
    if E::IS_BF16 {
        // SAFETY: 8 bf16 = 16 readable bytes at p (caller's contract).
        let raw = unsafe { _mm_loadu_si128(p.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: 8 f32 readable at p (caller's contract).
        unsafe { _mm256_loadu_ps(p.cast()) }
    }
}

/// The `MR x NP` tile.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_fixed<E: Elem, const MR: usize, const NP: usize>(w: *const E, a: &TileArgs) {
    let mut acc = [[[_mm256_setzero_ps(); 2]; NP]; MR];
    for kk in a.k0..a.k1 {
        let mut wv = [[_mm256_setzero_ps(); 2]; NP];
        for (p, v) in wv.iter_mut().enumerate() {
            let at = w.wrapping_add(p * a.pstride + kk * PANEL);
            if MR == 1 {
                // Prefetching never faults; `wrapping_add` keeps the address defined.
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_K * PANEL).cast());
            }
            // SAFETY: kk < k1, so the 16 weights of panel p at kk are readable.
            *v = unsafe { [load_w(at), load_w(at.add(8))] };
        }
        for (r, acc_row) in acc.iter_mut().enumerate() {
            // SAFETY: kk < k1 is inside x row r.
            let xv = _mm256_set1_ps(unsafe { *a.x.add(r * a.ldx + kk) });
            for (s, wc) in acc_row.iter_mut().zip(&wv) {
                s[0] = _mm256_fmadd_ps(xv, wc[0], s[0]);
                s[1] = _mm256_fmadd_ps(xv, wc[1], s[1]);
            }
        }
    }
    for (r, acc_row) in acc.iter().enumerate() {
        for (p, s) in acc_row.iter().enumerate() {
            let at = (r * NP + p) * PANEL;
            // SAFETY: out has mr * np * 16 floats.
            unsafe {
                _mm256_storeu_ps(a.out.add(at), s[0]);
                _mm256_storeu_ps(a.out.add(at + 8), s[1]);
            }
        }
    }
}

/// GEMV chunk over quantized panels (`a.mr == 1`, `pstride` in bytes), decoding each k's
/// 16 weights in registers exactly as [`crate::quant::decode_panel`] does.
///
/// # Safety
/// As [`tile`] with quantized panels of format `f` (k1 within the panels' k), mr = 1.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemv_blocks(f: BlockFormat, w: *const u8, a: &TileArgs) {
    macro_rules! dispatch {
        ($($p:literal),*) => {
            match (f, a.np) {
                // SAFETY (all arms): forwarded from our own contract.
                $((BlockFormat::Q8_0, $p) => unsafe { gemv_fixed::<0, $p>(w, a) },
                  (BlockFormat::Q4_0, $p) => unsafe { gemv_fixed::<1, $p>(w, a) },
                  (BlockFormat::Q4_1, $p) => unsafe { gemv_fixed::<2, $p>(w, a) },)*
                _ => unreachable!("{} panels is not an AVX2 GEMV shape", a.np),
            }
        };
    }
    dispatch!(1, 2, 3, 4);
}

/// Widens the 16 halves at `p` to two f32 vectors.
///
/// # Safety
/// 32 bytes at `p` must be readable.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load_halves(p: *const u8) -> [__m256; 2] {
    // SAFETY: 32 readable bytes (caller's contract).
    let (lo, hi) = unsafe { (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(16).cast())) };
    [_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi)]
}

/// The 16 quants of one k as two vectors of i32 (format `F`, value `j` of the block).
///
/// # Safety
/// `q` points at the block's quants.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_quants<const F: u8>(q: *const u8, j: usize) -> [__m256i; 2] {
    if F == 0 {
        // SAFETY: 32 rows of 16 quants (caller's contract).
        let (lo, hi) = unsafe {
            (
                _mm_loadl_epi64(q.add(j * 16).cast()),
                _mm_loadl_epi64(q.add(j * 16 + 8).cast()),
            )
        };
        return [_mm256_cvtepi8_epi32(lo), _mm256_cvtepi8_epi32(hi)];
    }
    let row = q.wrapping_add((j % 16) * 16);
    // SAFETY: 16 rows of 16 nibble pairs (caller's contract).
    let (lo, hi) = unsafe {
        (
            _mm_loadl_epi64(row.cast()),
            _mm_loadl_epi64(row.add(8).cast()),
        )
    };
    let mut v = [_mm256_cvtepu8_epi32(lo), _mm256_cvtepu8_epi32(hi)];
    for h in &mut v {
        if j >= 16 {
            *h = _mm256_srli_epi32::<4>(*h);
        }
        *h = _mm256_and_si256(*h, _mm256_set1_epi32(0xF));
        if F == 1 {
            *h = _mm256_sub_epi32(*h, _mm256_set1_epi32(8));
        }
    }
    v
}

/// [`gemv_blocks`] for format `F` (0: Q8_0, 1: Q4_0, 2: Q4_1) and `NP` panels.
///
/// # Safety
/// As [`gemv_blocks`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_fixed<const F: u8, const NP: usize>(w: *const u8, a: &TileArgs) {
    let fmt = [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1][F as usize];
    let (block_bytes, quants_at) = (fmt.panel_block_bytes(), fmt.panel_quants_at());
    let mut acc = [[_mm256_setzero_ps(); 2]; NP];
    let mut kk = a.k0;
    while kk < a.k1 {
        let b = kk / BLOCK;
        let end = a.k1.min((b + 1) * BLOCK);
        let mut d = [[_mm256_setzero_ps(); 2]; NP];
        let mut m = [[_mm256_setzero_ps(); 2]; NP];
        let mut q = [std::ptr::null::<u8>(); NP];
        for p in 0..NP {
            let base = w.wrapping_add(p * a.pstride + b * block_bytes);
            // SAFETY: block b of panel p is inside the panels; Q4_1 has mins after scales.
            unsafe {
                d[p] = load_halves(base);
                if F == 2 {
                    m[p] = load_halves(base.add(32));
                }
            }
            q[p] = base.wrapping_add(quants_at);
            _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(2 * block_bytes).cast());
        }
        for kk in kk..end {
            let j = kk % BLOCK;
            // SAFETY: kk < k1 is inside x's row.
            let xv = _mm256_set1_ps(unsafe { *a.x.add(kk) });
            for p in 0..NP {
                // SAFETY: q[p] points at block b's quants of panel p.
                let iv = unsafe { load_quants::<F>(q[p], j) };
                for h in 0..2 {
                    let mut wv = _mm256_mul_ps(_mm256_cvtepi32_ps(iv[h]), d[p][h]);
                    if F == 2 {
                        wv = _mm256_add_ps(wv, m[p][h]);
                    }
                    acc[p][h] = _mm256_fmadd_ps(xv, wv, acc[p][h]);
                }
            }
        }
        kk = end;
    }
    for (p, s) in acc.iter().enumerate() {
        // SAFETY: out has np * 16 floats.
        unsafe {
            _mm256_storeu_ps(a.out.add(p * PANEL), s[0]);
            _mm256_storeu_ps(a.out.add(p * PANEL + 8), s[1]);
        }
    }
}
