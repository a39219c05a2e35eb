//! `exp` for f32 lanes with one fixed sequence of exactly rounded operations, so the
//! scalar, AVX2 and AVX-512 versions give the same bits, and the softmax numerators built
//! on it (the attention's softmax and the SiLU gate use it).
//!
//! ```text
//!  x in [MIN_X, MAX_X]:   n = round_ties_even(x * log2(e))
//!                         r = fma(n, -LN2_HI, x);  r = fma(n, -LN2_LO, r)      |r| <= ln2/2
//!                         p = 1 + r + r^2/2! + ... + r^7/7!  (Horner, one fma per term)
//!                         exp(x) = p * 2^n     (2^n built from its exponent bits)
//!  x < MIN_X: +0   x > MAX_X: +inf   NaN: NaN
//! ```
//!
//! The degree-7 Taylor remainder on |r| <= ln2/2 is below 6e-9 (relative), so the result is
//! within 2 ulp of the true value (the unit test sweeps the range). Results under f32's
//! smallest normal (x below about -87.3) may lose low bits; below -87.5 they are flushed to
//! zero, and above 88.3 (true value at least 2.1e38, near f32::MAX) they are +inf: neither
//! matters to a softmax, whose largest numerator is 1, nor to silu.

use crate::isa::Isa;

/// Below this, `exp` returns +0.
const MIN_X: f32 = -87.5;
/// Above this, `exp` returns +inf.
const MAX_X: f32 = 88.3;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two: `LN2_HI` has few significant bits, so `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor coefficients 1/k! for k = 7 down to 2 (1/1! and 1/0! are 1).
const TAYLOR: [f32; 6] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
];

/// exp(x), the reference lane every vector version reproduces bit for bit.
pub(crate) fn exp_lane(x: f32) -> f32 {
    let xc = x.clamp(MIN_X, MAX_X);
    let n = (xc * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    let mut p = TAYLOR[0];
    for c in &TAYLOR[1..] {
        p = p.mul_add(r, *c);
    }
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // n is an integer in [-126, 127] here, so n + 127 is a normal exponent field.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = p * two_n;
    if x.is_nan() {
        x
    } else if x < MIN_X {
        0.0
    } else if x > MAX_X {
        f32::INFINITY
    } else {
        y
    }
}

/// Scales a row of scores, then replaces each by `exp(score - max)`; returns their sum (the
/// softmax denominator). The sum has 16 lane accumulators (element `16c + l` goes to lane
/// `l`, in order) and the fixed tree of `dot16` over the lanes, so it is the same on every
/// path and depends only on the row.
pub(crate) fn softmax_numerators(isa: Isa, row: &mut [f32], scale: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a pool only carries an ISA that `Isa::is_available` confirmed.
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { x86::softmax_avx512(row, scale) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::softmax_avx2(row, scale) },
        _ => softmax_scalar(row, scale),
    }
}

/// The portable softmax numerators, the order the vector versions reproduce.
fn softmax_scalar(row: &mut [f32], scale: f32) -> f32 {
    let mut max = f32::NEG_INFINITY;
    for sc in row.iter_mut() {
        *sc *= scale;
        max = max.max(*sc);
    }
    let mut acc = [0.0f32; 16];
    for chunk in row.chunks_mut(16) {
        for (sc, a) in chunk.iter_mut().zip(acc.iter_mut()) {
            *sc = exp_lane(*sc - max);
            *a += *sc;
        }
    }
    crate::dot16::tree_sum(&acc)
}

/// gate[i] = gate[i] / (1 + exp(-gate[i])) * up[i] for i < min(len), on `isa`.
pub(crate) fn silu_mul_rows(isa: Isa, gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: a pool only carries an ISA that `Isa::is_available` confirmed; both x86
        // paths have AVX2 + FMA.
        done = unsafe { x86::silu_mul_avx2(&mut gate[..n], &up[..n]) };
    }
    for (g, &u) in gate[done..n].iter_mut().zip(&up[done..n]) {
        *g = *g / (1.0 + exp_lane(-*g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX2 and AVX-512 lanes of `exp` and the softmax and SiLU loops over them.
    use std::arch::x86_64::*;

    use super::{LN2_HI, LN2_LO, LOG2E, MAX_X, MIN_X, TAYLOR};
    use crate::dot16::{lane_mask, tree_sum8, tree_sum_zmm};

    /// Round to nearest even, exceptions suppressed.
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    /// [`super::exp_lane`] on 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp8(x: __m256) -> __m256 {
        let xc = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(MIN_X)),
            _mm256_set1_ps(MAX_X),
        );
        let n = _mm256_round_ps::<NEAREST>(_mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)));
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_HI), xc);
        let r = _mm256_fmadd_ps(n, _mm256_set1_ps(-LN2_LO), r);
        let mut p = _mm256_set1_ps(TAYLOR[0]);
        for c in &TAYLOR[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let one = _mm256_set1_ps(1.0);
        p = _mm256_fmadd_ps(p, r, one);
        p = _mm256_fmadd_ps(p, r, one);
        let bits = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        let y = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)));
        let low = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(MIN_X));
        let y = _mm256_blendv_ps(y, _mm256_setzero_ps(), low);
        let high = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(MAX_X));
        let y = _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), high);
        _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }

    /// [`super::exp_lane`] on 16 lanes.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn exp16(x: __m512) -> __m512 {
        let xc = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(MIN_X)),
            _mm512_set1_ps(MAX_X),
        );
        let n = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)));
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_HI), xc);
        let r = _mm512_fmadd_ps(n, _mm512_set1_ps(-LN2_LO), r);
        let mut p = _mm512_set1_ps(TAYLOR[0]);
        for c in &TAYLOR[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let one = _mm512_set1_ps(1.0);
        p = _mm512_fmadd_ps(p, r, one);
        p = _mm512_fmadd_ps(p, r, one);
        let bits = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
        let y = _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits)));
        let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(MIN_X));
        let y = _mm512_mask_mov_ps(y, low, _mm512_setzero_ps());
        let high = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(MAX_X));
        let y = _mm512_mask_mov_ps(y, high, _mm512_set1_ps(f32::INFINITY));
        _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), x)
    }

    /// [`super::softmax_scalar`] with 16 lanes as two ymm registers (element `16c + l`
    /// goes to register `l / 8`, lane `l % 8`).
    ///
    /// # Safety
    /// The CPU must have AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_avx2(row: &mut [f32], scale: f32) -> f32 {
        let n = row.len();
        let p = row.as_mut_ptr();
        let full = n / 8 * 8;
        let tail = _mm256_castps_si256(lane_mask(full, n));
        let vs = _mm256_set1_ps(scale);
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for i in (0..full).step_by(8) {
            // SAFETY: i + 8 <= n.
            unsafe {
                let s = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), vs);
                _mm256_storeu_ps(p.add(i), s);
                vmax = _mm256_max_ps(vmax, s);
            }
        }
        if full < n {
            // SAFETY: the masked load and store touch only lanes below n - full.
            unsafe {
                let s = _mm256_mul_ps(_mm256_maskload_ps(p.add(full), tail), vs);
                _mm256_maskstore_ps(p.add(full), tail, s);
                vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(vmax, s, _mm256_castsi256_ps(tail)));
            }
        }
        let m4 = _mm_max_ps(
            _mm256_castps256_ps128(vmax),
            _mm256_extractf128_ps::<1>(vmax),
        );
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let vm = _mm256_set1_ps(_mm_cvtss_f32(_mm_max_ss(
            m2,
            _mm_shuffle_ps::<0b01>(m2, m2),
        )));
        let exp_at = |i: usize| {
            // SAFETY: callers pass i + 8 <= n.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vm));
                _mm256_storeu_ps(p.add(i), e);
                e
            }
        };
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= full {
            acc[0] = _mm256_add_ps(acc[0], exp_at(i));
            acc[1] = _mm256_add_ps(acc[1], exp_at(i + 8));
            i += 16;
        }
        if i < full {
            acc[0] = _mm256_add_ps(acc[0], exp_at(i));
        }
        if full < n {
            // SAFETY: the masked load and store touch only lanes below n - full.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_maskload_ps(p.add(full), tail), vm));
                _mm256_maskstore_ps(p.add(full), tail, e);
                let e = _mm256_and_ps(e, _mm256_castsi256_ps(tail));
                acc[(full / 8) % 2] = _mm256_add_ps(acc[(full / 8) % 2], e);
            }
        }
        tree_sum8(_mm256_add_ps(acc[0], acc[1]))
    }

    /// [`super::softmax_scalar`] with 16 lanes in one zmm register.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F + FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn softmax_avx512(row: &mut [f32], scale: f32) -> f32 {
        let n = row.len();
        let p = row.as_mut_ptr();
        let vs = _mm512_set1_ps(scale);
        let mask_at = |i: usize| -> __mmask16 {
            let valid = (n - i).min(16);
            ((1u32 << valid) - 1) as __mmask16
        };
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in (0..n).step_by(16) {
            let mask = mask_at(i);
            // SAFETY: the masked load and store touch only lanes below n - i.
            unsafe {
                let s = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, p.add(i)), vs);
                _mm512_mask_storeu_ps(p.add(i), mask, s);
                vmax = _mm512_mask_max_ps(vmax, mask, vmax, s);
            }
        }
        let vm = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        let mut acc = _mm512_setzero_ps();
        for i in (0..n).step_by(16) {
            let mask = mask_at(i);
            // SAFETY: as above.
            unsafe {
                let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p.add(i)), vm));
                _mm512_mask_storeu_ps(p.add(i), mask, e);
                acc = _mm512_mask_add_ps(acc, mask, acc, e);
            }
        }
        tree_sum_zmm(acc)
    }

    /// SiLU-gating on 8 lanes at a time; returns how many elements it did (the caller
    /// finishes the rest with the scalar lane, which gives the same bits).
    ///
    /// # Safety
    /// The CPU must have AVX2 + FMA; `gate` and `up` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len().min(up.len());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n, inside both slices.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                let u = _mm256_loadu_ps(up.as_ptr().add(i));
                let e = exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0)));
                let y = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u);
                _mm256_storeu_ps(gate.as_mut_ptr().add(i), y);
            }
            i += 8;
        }
        i
    }
}

#[cfg(test)]
#[path = "exp_tests.rs"]
mod tests;
