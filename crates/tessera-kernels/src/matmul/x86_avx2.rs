//! AVX2 + FMA tile kernels: a panel is two `ymm` (outputs 0-7, 8-15), 6 rows x 1 panel for
//! GEMM (12 accumulators of 16 ymm), 1 row x 4 panels for GEMV (8 fma chains in flight),
//! the GEMV over quantized panels one panel at a time (scales widened with F16C), and the
//! same tiles over bf16 pair panels (two fmas per pair, see [`super::pairs`]).

use std::arch::x86_64::*;

use super::drive::{Shape, TileArgs, PANEL};
use crate::quant::{BlockFormat, BLOCK};

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

/// GEMV chunk over quantized panels (`a.mr == 1`, `pstride` in bytes), decoding each k's
/// 16 weights in registers exactly as [`crate::quant::decode_panel`] does.
///
/// # Safety
/// As [`tile`] with quantized panels of format `f` (k1 within the panels' k), mr = 1.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gemv_blocks(f: BlockFormat, w: *const u8, a: &TileArgs) {
    // One panel at a time: four at once spilled the decode's registers, and two (no
    // spills) still read 15-20% slower on AMD EPYC; the order within a panel is the same.
    for p in 0..a.np {
        let one = TileArgs {
            np: 1,
            // SAFETY (`add`): panel p < np and its 16 sums are inside the caller's panels/out.
            out: unsafe { a.out.add(p * PANEL) },
            ..*a
        };
        let w = w.wrapping_add(p * a.pstride);
        // SAFETY: panel p satisfies our contract as a one-panel tile.
        unsafe {
            match f {
                BlockFormat::Q8_0 => gemv_fixed::<0>(w, &one),
                BlockFormat::Q4_0 => gemv_fixed::<1>(w, &one),
                BlockFormat::Q4_1 => gemv_fixed::<2>(w, &one),
            }
        }
    }
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

/// The 16 quants of one k as two vectors of i32 (format `F`, value `j` of the block;
/// `HIGH`: j >= 16, the high nibbles of 4-bit formats).
///
/// # Safety
/// `q` points at the block's quants.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_quants<const F: u8, const HIGH: bool>(q: *const u8, j: usize) -> [__m256i; 2] {
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
        // Zero-extended bytes: the high nibble needs only the shift.
        *h = if HIGH {
            _mm256_srli_epi32::<4>(*h)
        } else {
            _mm256_and_si256(*h, _mm256_set1_epi32(0xF))
        };
        if F == 1 {
            *h = _mm256_sub_epi32(*h, _mm256_set1_epi32(8));
        }
    }
    v
}

/// [`gemv_blocks`] for format `F` (0: Q8_0, 1: Q4_0, 2: Q4_1), one panel.
///
/// # Safety
/// As [`gemv_blocks`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_fixed<const F: u8>(w: *const u8, a: &TileArgs) {
    const NP: usize = 1;
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
            _mm_prefetch::<_MM_HINT_T1>(base.wrapping_add(2 * block_bytes).cast());
        }
        // The low nibbles serve j < 16, the high ones the rest: two loops, no branch per k.
        let (j0, j1) = (kk - b * BLOCK, end - b * BLOCK);
        let x = a.x.wrapping_add(b * BLOCK);
        // SAFETY: j0..j1 lies inside block b, whose x values and quants are readable.
        unsafe {
            block_fmas::<F, NP, false>(&mut acc, &d, &m, &q, x, j0..j1.min(16));
            block_fmas::<F, NP, true>(&mut acc, &d, &m, &q, x, j0.max(16)..j1);
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

/// Values `js` of one block (all of one nibble half, `HIGH`): `acc += x[j] * w[j]` in
/// order, each w decoded as [`crate::quant::decode_panel`] does.
///
/// # Safety
/// `x[j]` and row j of every `q[p]` are readable for each j in `js`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_fmas<const F: u8, const NP: usize, const HIGH: bool>(
    acc: &mut [[__m256; 2]; NP],
    d: &[[__m256; 2]; NP],
    m: &[[__m256; 2]; NP],
    q: &[*const u8; NP],
    x: *const f32,
    js: std::ops::Range<usize>,
) {
    for j in js {
        // SAFETY: j is inside x's block (contract).
        let xv = _mm256_set1_ps(unsafe { *x.add(j) });
        for p in 0..NP {
            // SAFETY: q[p] points at the block's quants (contract).
            let iv = unsafe { load_quants::<F, HIGH>(q[p], j) };
            for h in 0..2 {
                let q = _mm256_cvtepi32_ps(iv[h]);
                // q * d is exact, so the fused form rounds (and signs zeros) exactly
                // as multiply-then-add.
                let wv = if F == 2 {
                    _mm256_fmadd_ps(q, d[p][h], m[p][h])
                } else {
                    _mm256_mul_ps(q, d[p][h])
                };
                acc[p][h] = _mm256_fmadd_ps(xv, wv, acc[p][h]);
            }
        }
    }
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
