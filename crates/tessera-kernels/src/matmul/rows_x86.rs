//! GEMV straight from row-major weights (no packing): 16 rows at a time, each 16 x 16
//! (AVX-512) or 8 x 8 (AVX2) block transposed in registers, so the fma chain over k is
//! exactly the packed kernels' (one chain per output, vectorised across the 16 outputs).

use std::arch::x86_64::*;

use super::drive::{TileArgs, PANEL};
use super::Elem;

/// One panel's chunk of a GEMV over row-major weights: rows `0..16` at `w`, `pstride`
/// elements apart; outputs to `out[0..16]`.
///
/// # Safety
/// 16 rows of at least `k1` elements at `w`, x holds `k1` floats, `out` 16 floats, and the
/// CPU has AVX-512 F/BW/VL + FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(crate) unsafe fn gemv_rows_avx512<E: Elem>(w: *const E, a: &TileArgs) {
    let mut acc = _mm512_setzero_ps();
    let next = w.wrapping_add(PANEL * a.pstride);
    let mut kt = a.k0;
    while kt < a.k1 {
        let kw = PANEL.min(a.k1 - kt);
        let mask: __mmask16 = ((1u32 << kw) - 1) as __mmask16;
        let mut r = [_mm512_setzero_ps(); PANEL];
        for (o, v) in r.iter_mut().enumerate() {
            let p = w.wrapping_add(o * a.pstride + kt);
            // Prefetching never faults; `wrapping_add` keeps the address defined.
            _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(o * a.pstride + kt).cast());
            // SAFETY: the kw masked-in elements of row o from kt are inside the row.
            *v = unsafe { load16_masked(p, mask) };
        }
        let t = transpose16(&r);
        for (kk, col) in t.iter().enumerate().take(kw) {
            // SAFETY: kt + kk < k1 is inside x.
            let xv = _mm512_set1_ps(unsafe { *a.x.add(kt + kk) });
            acc = _mm512_fmadd_ps(xv, *col, acc);
        }
        kt += kw;
    }
    // SAFETY: out has 16 floats.
    unsafe { _mm512_storeu_ps(a.out, acc) };
}

/// The masked-in elements at `p` widened to f32, zero elsewhere.
///
/// # Safety
/// The masked-in elements must be readable.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn load16_masked<E: Elem>(p: *const E, mask: __mmask16) -> __m512 {
    if E::IS_BF16 {
        // SAFETY: masked loads do not touch masked-off elements.
        let raw = unsafe { _mm256_maskz_loadu_epi16(mask, p.cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: as above.
        unsafe { _mm512_maskz_loadu_ps(mask, p.cast()) }
    }
}

/// Transposes 16 rows of 16 floats: `out[k]` lane `o` = `r[o]` lane `k`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4j + c], lane L: elements 4L + c of rows 4j .. 4j + 3.
    let mut u = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        u[4 * j] = _mm512_shuffle_ps::<0x44>(t[4 * j], t[4 * j + 2]);
        u[4 * j + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * j], t[4 * j + 2]);
        u[4 * j + 2] = _mm512_shuffle_ps::<0x44>(t[4 * j + 1], t[4 * j + 3]);
        u[4 * j + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * j + 1], t[4 * j + 3]);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let p0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let p1 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let q0 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let q1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(p0, q0);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(p0, q0);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(p1, q1);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(p1, q1);
    }
    out
}

/// [`gemv_rows_avx512`] for AVX2 + FMA: two 8 x 8 transposes per 8 k (rows 0-7, 8-15).
///
/// # Safety
/// As [`gemv_rows_avx512`], with AVX2 + FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemv_rows_avx2<E: Elem>(w: *const E, a: &TileArgs) {
    let mut acc = [_mm256_setzero_ps(); 2];
    let next = w.wrapping_add(PANEL * a.pstride);
    let mut kt = a.k0;
    while kt < a.k1 {
        let kw = 8.min(a.k1 - kt);
        for (h, acc_h) in acc.iter_mut().enumerate() {
            let mut r = [_mm256_setzero_ps(); 8];
            for (o, v) in r.iter_mut().enumerate() {
                let row = 8 * h + o;
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(row * a.pstride + kt).cast());
                let p = w.wrapping_add(row * a.pstride + kt);
                // SAFETY: the kw elements of the row from kt are inside the row.
                *v = unsafe { load8(p, kw) };
            }
            let t = transpose8(&r);
            for (kk, col) in t.iter().enumerate().take(kw) {
                // SAFETY: kt + kk < k1 is inside x.
                let xv = _mm256_set1_ps(unsafe { *a.x.add(kt + kk) });
                *acc_h = _mm256_fmadd_ps(xv, *col, *acc_h);
            }
        }
        kt += kw;
    }
    // SAFETY: out has 16 floats.
    unsafe {
        _mm256_storeu_ps(a.out, acc[0]);
        _mm256_storeu_ps(a.out.add(8), acc[1]);
    }
}

/// `n <= 8` elements at `p` widened to f32, zero past them.
///
/// # Safety
/// `n` elements at `p` must be readable.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load8<E: Elem>(p: *const E, n: usize) -> __m256 {
    let mut buf = [E::default(); 8];
    let src = if n == 8 {
        p
    } else {
        // SAFETY: n readable elements (caller's contract); buf holds 8.
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n) };
        buf.as_ptr()
    };
    if E::IS_BF16 {
        // SAFETY: 8 bf16 readable at src (the row or the buffer).
        let raw = unsafe { _mm_loadu_si128(src.cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
    } else {
        // SAFETY: 8 f32 readable at src.
        unsafe { _mm256_loadu_ps(src.cast()) }
    }
}

/// Transposes 8 rows of 8 floats: `out[k]` lane `o` = `r[o]` lane `k`.
#[inline]
#[target_feature(enable = "avx")]
fn transpose8(r: &[__m256; 8]) -> [__m256; 8] {
    let mut t = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm256_setzero_ps(); 8];
    for j in 0..2 {
        u[4 * j] = _mm256_shuffle_ps::<0x44>(t[4 * j], t[4 * j + 2]);
        u[4 * j + 1] = _mm256_shuffle_ps::<0xEE>(t[4 * j], t[4 * j + 2]);
        u[4 * j + 2] = _mm256_shuffle_ps::<0x44>(t[4 * j + 1], t[4 * j + 3]);
        u[4 * j + 3] = _mm256_shuffle_ps::<0xEE>(t[4 * j + 1], t[4 * j + 3]);
    }
    let mut out = [_mm256_setzero_ps(); 8];
    for c in 0..4 {
        out[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
        out[4 + c] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
    }
    out
}
