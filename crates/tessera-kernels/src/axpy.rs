//! `y[i] = fma(a, x[i], y[i])` per instruction set: elementwise, so every path gives the
//! same bits (attention accumulates values with it, in key order).

use crate::isa::Isa;

/// y[i] = fma(a, x[i], y[i]) for i < min(len); `isa` must be available (a pool's ISA is).
pub(crate) fn axpy(isa: Isa, a: f32, x: &[f32], y: &mut [f32]) {
    match isa {
        Isa::Scalar => axpy_scalar(a, x, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a pool only carries an ISA that `Isa::is_available` confirmed.
        Isa::Avx2 | Isa::Avx512 => unsafe { axpy_avx2(a, x, y) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 => axpy_scalar(a, x, y),
    }
}

/// Portable version.
fn axpy_scalar(a: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = a.mul_add(xv, *yv);
    }
}

/// 8 lanes at a time (head widths are multiples of 8; AVX-512 would not be faster here).
///
/// # Safety
/// The CPU must have AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, and both slices hold at least n elements.
        unsafe {
            let yv = _mm256_loadu_ps(y.as_ptr().add(i));
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_fmadd_ps(av, xv, yv));
        }
        i += 8;
    }
    for (yv, &xv) in y[i..n].iter_mut().zip(&x[i..n]) {
        *yv = a.mul_add(xv, *yv);
    }
}
