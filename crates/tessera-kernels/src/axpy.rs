//! `y[i] = fma(a, x[i], y[i])` per instruction set: elementwise, so every path gives the
//! same bits (attention accumulates values with it, in key order). Value rows may be f32
//! or bf16 (widened exactly to f32 before the fma).

use crate::isa::Isa;
use crate::matmul::Elem;

/// y[i] = fma(a, x[i], y[i]) for i < min(len), x f32 or bf16 (widened exactly); `isa`
/// must be available (a pool's ISA is).
pub(crate) fn axpy<E: Elem>(isa: Isa, a: f32, x: &[E], y: &mut [f32]) {
    match isa {
        Isa::Scalar => axpy_scalar(a, x, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a pool only carries an ISA that `Isa::is_available` confirmed.
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16 => unsafe { axpy_avx2(a, x, y) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512 | Isa::Avx512Bf16 => axpy_scalar(a, x, y),
    }
}

/// Portable version.
fn axpy_scalar<E: Elem>(a: f32, x: &[E], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = a.mul_add(xv.to_f32(), *yv);
    }
}

/// 8 lanes at a time (head widths are multiples of 8; AVX-512 would not be faster here).
///
/// # Safety
/// The CPU must have AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2<E: Elem>(a: f32, x: &[E], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n, and both slices hold at least n elements.
        unsafe {
            let yv = _mm256_loadu_ps(y.as_ptr().add(i));
            let xv = crate::dot16::load8(x.as_ptr().add(i));
            _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_fmadd_ps(av, xv, yv));
        }
        i += 8;
    }
    for (yv, &xv) in y[i..n].iter_mut().zip(&x[i..n]) {
        *yv = a.mul_add(xv.to_f32(), *yv);
    }
}

/// `acc[i] = fma(w[c], v[offs[c] + i], acc[i])` for every key c in order, i < acc.len():
/// the attention's value sum. Per element it is exactly [`axpy`] called key after key, so
/// the bits are the same; head widths of 64 and 128 keep `acc` in AVX-512 registers, other
/// multiples of 32 in AVX2 registers, 64 columns at a time. bf16 values give the bits of
/// the same sum over their exact f32 widening.
///
/// # Safety
/// `isa` must be available, and `v[offs[c] .. offs[c] + acc.len()]` must be in bounds for
/// every c < `w.len()` (`offs` at least as long as `w`).
pub(crate) unsafe fn weighted_sum<E: Elem>(
    isa: Isa,
    w: &[f32],
    v: &[E],
    offs: &[usize],
    acc: &mut [f32],
) {
    let d = acc.len();
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx512() {
        match d {
            // SAFETY: forwarded from our contract; AVX-512 is available.
            64 => return unsafe { weighted_sum_avx512::<E, 4>(w, v, offs, acc) },
            // SAFETY: as above.
            128 => return unsafe { weighted_sum_avx512::<E, 8>(w, v, offs, acc) },
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && d.is_multiple_of(32) {
        // Column blocks of 64 (8 ymm accumulators), the last one 32 wide when d is an odd
        // multiple of 32: every element keeps its own fma chain over the keys in order.
        let mut col = 0;
        while col < d {
            let width = if d - col >= 64 { 64 } else { 32 };
            let block = &mut acc[col..col + width];
            // SAFETY: forwarded from our contract (v[off + col ..][..width] lies inside
            // v[off ..][..d]); AVX2 + FMA come with both x86 ISAs.
            unsafe {
                if width == 64 {
                    weighted_sum_avx2::<E, 8>(w, v, offs, col, block);
                } else {
                    weighted_sum_avx2::<E, 4>(w, v, offs, col, block);
                }
            }
            col += width;
        }
        return;
    }
    for (&wc, &off) in w.iter().zip(offs) {
        axpy(isa, wc, &v[off..off + d], acc);
    }
}

/// Keys ahead whose value rows the sums below prefetch: a decode step reads each value row
/// once, from memory, so without it every key waits for its row.
#[cfg(target_arch = "x86_64")]
const PREFETCH_KEYS: usize = 8;

/// Asks for the cache lines of `len` elements of `v` from `off` (a hint: it reads nothing
/// and changes no result).
#[inline(always)]
pub(crate) fn prefetch_row<E>(v: &[E], off: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = len * std::mem::size_of::<E>();
        let base = v.as_ptr().wrapping_add(off).cast::<i8>();
        for line in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults and reads nothing the program sees.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, off, len);
}

/// [`weighted_sum`] of columns `col .. col + 8 * N` of the value rows into `acc`
/// (`8 * N` floats), the accumulators held in N ymm registers across all keys.
///
/// # Safety
/// As [`weighted_sum`] for those columns, with AVX2 + FMA available and
/// `acc.len() == 8 * N`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum_avx2<E: Elem, const N: usize>(
    w: &[f32],
    v: &[E],
    offs: &[usize],
    col: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut regs = [_mm256_setzero_ps(); N];
    for (r, reg) in regs.iter_mut().enumerate() {
        // SAFETY: acc holds 8 * N floats.
        *reg = unsafe { _mm256_loadu_ps(acc.as_ptr().add(8 * r)) };
    }
    for (c, (&wc, &off)) in w.iter().zip(offs).enumerate() {
        if c + PREFETCH_KEYS < w.len() {
            prefetch_row(v, offs[c + PREFETCH_KEYS] + col, 8 * N);
        }
        let a = _mm256_set1_ps(wc);
        let row = v[off + col..off + col + 8 * N].as_ptr();
        for (r, reg) in regs.iter_mut().enumerate() {
            // SAFETY: the row slice above holds 8 * N elements.
            let x = unsafe { crate::dot16::load8(row.add(8 * r)) };
            *reg = _mm256_fmadd_ps(a, x, *reg);
        }
    }
    for (r, reg) in regs.iter().enumerate() {
        // SAFETY: acc holds 8 * N floats.
        unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(8 * r), *reg) };
    }
}

/// [`weighted_sum`] for `acc.len() == 16 * N`, accumulators held in N zmm registers.
///
/// # Safety
/// As [`weighted_sum`], with AVX-512 F/BW/VL available and `acc.len() == 16 * N`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn weighted_sum_avx512<E: Elem, const N: usize>(
    w: &[f32],
    v: &[E],
    offs: &[usize],
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut regs = [_mm512_setzero_ps(); N];
    for (r, reg) in regs.iter_mut().enumerate() {
        // SAFETY: acc holds 16 * N floats.
        *reg = unsafe { _mm512_loadu_ps(acc.as_ptr().add(16 * r)) };
    }
    for (c, (&wc, &off)) in w.iter().zip(offs).enumerate() {
        if c + PREFETCH_KEYS < w.len() {
            prefetch_row(v, offs[c + PREFETCH_KEYS], 16 * N);
        }
        let a = _mm512_set1_ps(wc);
        let row = v[off..off + 16 * N].as_ptr();
        for (r, reg) in regs.iter_mut().enumerate() {
            // SAFETY: the row slice above holds 16 * N elements.
            let x = unsafe { crate::dot16::load16(row.add(16 * r)) };
            *reg = _mm512_fmadd_ps(a, x, *reg);
        }
    }
    for (r, reg) in regs.iter().enumerate() {
        // SAFETY: acc holds 16 * N floats.
        unsafe { _mm512_storeu_ps(acc.as_mut_ptr().add(16 * r), *reg) };
    }
}

/// [`weighted_sum`] for several heads over the same keys: `accs` holds `heads` rows of
/// `d`, row h summing `w[h * stride ..][c]` times value row c. Each value row is read once
/// for all heads; per element the arithmetic is [`weighted_sum`]'s, so the bits match.
///
/// # Safety
/// As [`weighted_sum`] for every head; `w` holds `heads` rows `stride` apart of at least
/// `keys` weights each, `offs` at least `keys` offsets, `accs.len() == heads * d`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn weighted_sum_heads<E: Elem>(
    isa: Isa,
    w: &[f32],
    stride: usize,
    keys: usize,
    v: &[E],
    offs: &[usize],
    d: usize,
    accs: &mut [f32],
) {
    let heads = accs.len() / d.max(1);
    #[cfg(target_arch = "x86_64")]
    if isa.has_avx512() && d == 64 && (2..=4).contains(&heads) {
        // SAFETY: forwarded from our contract; AVX-512 is available; d = 16 * 4.
        return unsafe {
            match heads {
                2 => weighted_heads_avx512::<E, 4, 2>(w, stride, keys, v, offs, accs),
                3 => weighted_heads_avx512::<E, 4, 3>(w, stride, keys, v, offs, accs),
                _ => weighted_heads_avx512::<E, 4, 4>(w, stride, keys, v, offs, accs),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && (2..=4).contains(&heads) && d.is_multiple_of(32) {
        // Column blocks of 32 (heads 2-3) or 16 (4 heads): every head's accumulators of a
        // block stay in ymm registers while each value row is read once for all of them.
        // SAFETY: forwarded from our contract; AVX2 + FMA come with both x86 ISAs.
        unsafe {
            match heads {
                2 => weighted_heads_avx2::<E, 4, 2>(w, stride, keys, v, offs, d, accs),
                3 => weighted_heads_avx2::<E, 4, 3>(w, stride, keys, v, offs, d, accs),
                _ => weighted_heads_avx2::<E, 2, 4>(w, stride, keys, v, offs, d, accs),
            }
        }
        return;
    }
    for (h, acc) in accs.chunks_exact_mut(d.max(1)).enumerate() {
        let wh = &w[h * stride..h * stride + keys];
        // SAFETY: forwarded from our contract.
        unsafe { weighted_sum(isa, wh, v, offs, acc) };
    }
}

/// [`weighted_sum_heads`] for H heads in column blocks of 8 * N floats, each block's
/// H * N accumulators held in ymm registers over all keys.
///
/// # Safety
/// As [`weighted_sum_heads`], with AVX2 + FMA available, `heads == H` and `d` a multiple
/// of 8 * N.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_heads_avx2<E: Elem, const N: usize, const H: usize>(
    w: &[f32],
    stride: usize,
    keys: usize,
    v: &[E],
    offs: &[usize],
    d: usize,
    accs: &mut [f32],
) {
    use std::arch::x86_64::*;
    for col in (0..d).step_by(8 * N) {
        let mut regs = [[_mm256_setzero_ps(); N]; H];
        for (h, head) in regs.iter_mut().enumerate() {
            for (r, reg) in head.iter_mut().enumerate() {
                // SAFETY: accs holds H rows of d floats, and col + 8 * N <= d.
                *reg = unsafe { _mm256_loadu_ps(accs.as_ptr().add(h * d + col + 8 * r)) };
            }
        }
        for (c, &off) in offs.iter().enumerate().take(keys) {
            if c + PREFETCH_KEYS < keys {
                prefetch_row(v, offs[c + PREFETCH_KEYS] + col, 8 * N);
            }
            let row = v[off + col..off + col + 8 * N].as_ptr();
            let mut a = [_mm256_setzero_ps(); H];
            for (h, ah) in a.iter_mut().enumerate() {
                *ah = _mm256_set1_ps(w[h * stride + c]);
            }
            for r in 0..N {
                // SAFETY: the row slice above holds 8 * N elements.
                let x = unsafe { crate::dot16::load8(row.add(8 * r)) };
                for (head, ah) in regs.iter_mut().zip(&a) {
                    head[r] = _mm256_fmadd_ps(*ah, x, head[r]);
                }
            }
        }
        for (h, head) in regs.iter().enumerate() {
            for (r, reg) in head.iter().enumerate() {
                // SAFETY: as for the loads above.
                unsafe { _mm256_storeu_ps(accs.as_mut_ptr().add(h * d + col + 8 * r), *reg) };
            }
        }
    }
}

/// [`weighted_sum_heads`] for H heads of 16 * N floats, all accumulators in registers.
///
/// # Safety
/// As [`weighted_sum_heads`], with AVX-512 F/BW/VL available, `d == 16 * N`, `heads == H`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn weighted_heads_avx512<E: Elem, const N: usize, const H: usize>(
    w: &[f32],
    stride: usize,
    keys: usize,
    v: &[E],
    offs: &[usize],
    accs: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut regs = [[_mm512_setzero_ps(); N]; H];
    for (h, head) in regs.iter_mut().enumerate() {
        for (r, reg) in head.iter_mut().enumerate() {
            // SAFETY: accs holds H * 16 * N floats.
            *reg = unsafe { _mm512_loadu_ps(accs.as_ptr().add(h * 16 * N + 16 * r)) };
        }
    }
    for (c, &off) in offs.iter().enumerate().take(keys) {
        if c + PREFETCH_KEYS < keys {
            prefetch_row(v, offs[c + PREFETCH_KEYS], 16 * N);
        }
        let row = v[off..off + 16 * N].as_ptr();
        let mut x = [_mm512_setzero_ps(); N];
        for (r, xr) in x.iter_mut().enumerate() {
            // SAFETY: the row slice above holds 16 * N elements.
            *xr = unsafe { crate::dot16::load16(row.add(16 * r)) };
        }
        for (h, head) in regs.iter_mut().enumerate() {
            let a = _mm512_set1_ps(w[h * stride + c]);
            for (reg, xr) in head.iter_mut().zip(&x) {
                *reg = _mm512_fmadd_ps(a, *xr, *reg);
            }
        }
    }
    for (h, head) in regs.iter().enumerate() {
        for (r, reg) in head.iter().enumerate() {
            // SAFETY: accs holds H * 16 * N floats.
            unsafe { _mm512_storeu_ps(accs.as_mut_ptr().add(h * 16 * N + 16 * r), *reg) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed pseudo-random sequence in [-0.5, 0.5).
    fn lcg(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / 16_777_216.0 - 0.5
        }
    }

    /// Fails with `what` unless `got` and `want` have the same bits.
    fn assert_bits(got: &[f32], want: &[f32], what: &str) {
        let same = got
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same && got.len() == want.len(), "{what}");
    }

    /// The several-heads sum equals each head's plain chain, on every ISA, f32 and bf16.
    #[test]
    fn head_group_sums_match_the_scalar_chain_bitwise_on_every_isa() {
        let mut next = lcg(11);
        for (d, heads) in [
            (64, 2),
            (64, 3),
            (64, 4),
            (32, 3),
            (96, 2),
            (128, 4),
            (24, 3),
        ] {
            let (keys, stride) = (29, 33);
            let v: Vec<f32> = (0..(keys + 2) * d).map(|_| next()).collect();
            let vb: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
            let w: Vec<f32> = (0..heads * stride).map(|_| next()).collect();
            let offs: Vec<usize> = (0..keys).map(|c| ((c * 5) % (keys + 2)) * d).collect();
            let start: Vec<f32> = (0..heads * d).map(|_| next()).collect();
            for bf16 in [false, true] {
                let row = |off: usize| -> Vec<f32> {
                    if bf16 {
                        vb[off..off + d].iter().map(|x| x.to_f32()).collect()
                    } else {
                        v[off..off + d].to_vec()
                    }
                };
                let mut want = start.clone();
                for (h, acc) in want.chunks_exact_mut(d).enumerate() {
                    for (c, &off) in offs.iter().enumerate() {
                        axpy_scalar(w[h * stride + c], &row(off), acc);
                    }
                }
                for isa in Isa::available() {
                    let mut got = start.clone();
                    // SAFETY: every offset + d is inside v; w holds `heads` rows of
                    // `stride` >= keys; `isa` is available.
                    unsafe {
                        if bf16 {
                            weighted_sum_heads(isa, &w, stride, keys, &vb, &offs, d, &mut got);
                        } else {
                            weighted_sum_heads(isa, &w, stride, keys, &v, &offs, d, &mut got);
                        }
                    }
                    assert_bits(
                        &got,
                        &want,
                        &format!("d {d} heads {heads} bf16 {bf16} {isa:?}"),
                    );
                }
            }
        }
    }

    /// Every ISA's value sum equals the plain fma chain per element, key after key.
    #[test]
    fn weighted_sums_match_the_scalar_chain_bitwise_on_every_isa() {
        let mut next = lcg(7);
        for d in [8, 24, 32, 64, 80, 96, 128, 160, 192] {
            let keys = 37;
            let v: Vec<f32> = (0..(keys + 3) * d).map(|_| next()).collect();
            let w: Vec<f32> = (0..keys).map(|_| next()).collect();
            // Shuffled, non-contiguous rows, as a paged cache gives them.
            let offs: Vec<usize> = (0..keys).map(|c| ((c * 7) % (keys + 3)) * d).collect();
            let start: Vec<f32> = (0..d).map(|_| next()).collect();
            let mut want = start.clone();
            for (&wc, &off) in w.iter().zip(&offs) {
                axpy_scalar(wc, &v[off..off + d], &mut want);
            }
            for isa in Isa::available() {
                let mut got = start.clone();
                // SAFETY: every offset + d is inside v; `isa` is available.
                unsafe { weighted_sum(isa, &w, &v, &offs, &mut got) };
                assert_bits(&got, &want, &format!("d {d} {isa:?}"));
            }
            // bf16 value rows: the same chain over their exact f32 widening.
            let vb: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
            let mut want = start.clone();
            for (&wc, &off) in w.iter().zip(&offs) {
                let row: Vec<f32> = vb[off..off + d].iter().map(|x| x.to_f32()).collect();
                axpy_scalar(wc, &row, &mut want);
            }
            for isa in Isa::available() {
                let mut got = start.clone();
                // SAFETY: as above.
                unsafe { weighted_sum(isa, &w, &vb, &offs, &mut got) };
                assert_bits(&got, &want, &format!("bf16 d {d} {isa:?}"));
            }
        }
    }
}
