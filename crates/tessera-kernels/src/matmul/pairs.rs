//! bf16 weights times bf16 activations, two k at a time: the order of AVX-512 BF16's
//! `vdpbf16ps`, which every path follows bit for bit.
//!
//! ```text
//!  x (f32)  --round to bf16, nearest even; subnormals to +-0-->  xb
//!  pair panel p, pair q (k = 2q, 2q+1):
//!     w[16p][2q] w[16p][2q+1] w[16p+1][2q] w[16p+1][2q+1] ... w[16p+15][2q+1]   (one zmm)
//!  each output, each reduction chunk (even width):  acc = +0, then per pair
//!     acc = fma(xb[2q+1], w[2q+1], acc);  acc = fma(xb[2q], w[2q], acc)
//! ```
//!
//! A bf16 x bf16 product is exact in f32, so each step rounds once: the instruction's two
//! steps, odd k first (checked against the instruction bit for bit by the tests). An odd
//! `k` pads its last pair with zeros, which every path multiplies too. The instruction also
//! flushes subnormals to zero: activations are flushed when rounded and weights when packed,
//! so the paths can differ only where a running sum itself falls below 2^-126, which the
//! instruction flushes and the fma paths keep (README, "Why the output does not depend on
//! the batch").

use std::cell::RefCell;

use half::bf16;

use super::drive::{TileArgs, PANEL};
use super::reference::fold_chunks;
use super::{check_operands, ChunkOutput};
use crate::aligned::{line_vec, LineVec, LINE};
use crate::error::{check_len, mul, KernelError};

/// `k` rounded up to whole pairs: the row length of rounded activations and pair panels.
pub(crate) fn pairs_len(k: usize) -> usize {
    k.div_ceil(2) * 2
}

/// The bf16 bits of `x` rounded to nearest even; subnormals become signed zeros and NaNs
/// stay NaN (quiet), as `vcvtne2ps2bf16` does. Written with selects, not branches, so that
/// a row of them vectorizes.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let abs = bits & 0x7fff_ffff;
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let out = if abs > 0x7f80_0000 {
        (bits >> 16) | 0x40
    } else if abs < 0x0080_0000 {
        (bits >> 16) & 0x8000
    } else {
        rounded
    };
    out as u16
}

/// A weight as the instruction reads it: a subnormal bf16 becomes a signed zero.
fn flush_bf16(w: bf16) -> u16 {
    let bits = w.to_bits();
    if bits & 0x7f80 == 0 {
        bits & 0x8000
    } else {
        bits
    }
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub(crate) fn widen(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// Packs row-major bf16 weights `[rows, cols]` into pair panels (zero rows past `rows`,
/// a zero column past an odd `cols`), subnormals flushed.
pub(crate) fn pack_pairs(
    w: &[bf16],
    rows: usize,
    cols: usize,
) -> Result<LineVec<u16>, KernelError> {
    check_len("w", mul("w", rows, cols)?, w.len())?;
    let kp = pairs_len(cols);
    let mut out = line_vec(0u16, mul("w", rows.div_ceil(PANEL) * PANEL, kp)?);
    for (row, src) in w.chunks_exact(cols.max(1)).take(rows).enumerate() {
        let panel = &mut out[row / PANEL * PANEL * kp..][..PANEL * kp];
        for (kk, &v) in src.iter().enumerate() {
            panel[pair_index(row % PANEL, kk)] = flush_bf16(v);
        }
    }
    Ok(out)
}

/// Where output `o`'s weight at `kk` sits inside its pair panel.
pub(crate) fn pair_index(o: usize, kk: usize) -> usize {
    kk / 2 * 2 * PANEL + o * 2 + kk % 2
}

/// The activations of a bf16 matmul, rounded once per call, rows `pairs_len(k)` apart
/// (the pad column is zero).
pub(crate) enum Rounded<'a> {
    /// As f32 values (low 16 bits zero), for the paths that broadcast one k at a time.
    F32(&'a [f32]),
    /// As bf16 bits, for the instruction, which broadcasts a pair at a time.
    Bf16(&'a [u16]),
}

thread_local! {
    /// The calling thread's rounded activations, grown to the largest request and kept.
    static ROUNDED: RefCell<(LineVec<f32>, LineVec<u16>)> =
        RefCell::new((LineVec::new(LINE), LineVec::new(LINE)));
}

/// Calls `f` with `m` rows of `k` activations rounded for a bf16 matmul (`as_bits`: as bf16
/// bits, else as f32 values).
pub(crate) fn with_rounded<R>(
    x: &[f32],
    m: usize,
    k: usize,
    as_bits: bool,
    f: impl FnOnce(Rounded<'_>) -> R,
) -> R {
    let len = m * pairs_len(k);
    let fill = |bufs: &mut (LineVec<f32>, LineVec<u16>)| {
        if as_bits {
            fill_rows(&mut bufs.1, x, m, k, round_bf16);
        } else {
            fill_rows(&mut bufs.0, x, m, k, |v| widen(round_bf16(v)));
        }
    };
    let call = |bufs: &(LineVec<f32>, LineVec<u16>)| {
        if as_bits {
            f(Rounded::Bf16(&bufs.1[..len]))
        } else {
            f(Rounded::F32(&bufs.0[..len]))
        }
    };
    ROUNDED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            fill(&mut bufs);
            call(&bufs)
        }
        // Re-entered on this thread: fresh buffers.
        Err(_) => {
            let mut bufs = (LineVec::new(LINE), LineVec::new(LINE));
            fill(&mut bufs);
            call(&bufs)
        }
    })
}

/// Writes `m` rows of `k` activations into `buf` (grown to hold them), `pairs_len(k)`
/// apart, each value through `conv`, the pad column zero.
fn fill_rows<T: Copy + Default>(
    buf: &mut LineVec<T>,
    x: &[f32],
    m: usize,
    k: usize,
    conv: impl Fn(f32) -> T,
) {
    let kp = pairs_len(k);
    let len = m * kp;
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    let rows = x.chunks_exact(k.max(1)).take(m);
    for (dst, src) in buf[..len].chunks_exact_mut(kp.max(1)).zip(rows) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = conv(v);
        }
        dst[k..].fill(T::default());
    }
}

/// Portable pair kernel: `out[r][p][o]` is the pair chain of k0..k1 (x rounded, as f32).
///
/// # Safety
/// Rows `0..mr` of x (`ldx` apart) hold `pairs_len(k1)` floats, panels `0..np` at `w`
/// (`pstride` elements apart) hold the pairs up to k1, `out` has room for `mr * np * 16`
/// floats, and k0 is even.
pub(crate) unsafe fn tile_scalar(w: *const u16, a: &TileArgs) {
    let ld = a.np * PANEL;
    let (q0, q1) = (a.k0 / 2, a.k1.div_ceil(2));
    // SAFETY: `out` has mr * np * 16 floats (contract).
    let out = unsafe { std::slice::from_raw_parts_mut(a.out, a.mr * ld) };
    for r in 0..a.mr {
        // SAFETY: row r holds 2 q1 floats (contract).
        let x = unsafe { std::slice::from_raw_parts(a.x.add(r * a.ldx), 2 * q1) };
        for p in 0..a.np {
            // SAFETY: panel p holds the q1 pairs (contract).
            let wp = unsafe { std::slice::from_raw_parts(w.add(p * a.pstride), 2 * PANEL * q1) };
            let mut acc = [0.0f32; PANEL];
            for q in q0..q1 {
                let (xe, xo) = (x[2 * q], x[2 * q + 1]);
                let pair = &wp[2 * PANEL * q..][..2 * PANEL];
                for (o, v) in acc.iter_mut().enumerate() {
                    *v = xo.mul_add(widen(pair[2 * o + 1]), *v);
                    *v = xe.mul_add(widen(pair[2 * o]), *v);
                }
            }
            out[r * ld + p * PANEL..][..PANEL].copy_from_slice(&acc);
        }
    }
}

/// Plain single-threaded reference of a bf16-weight matmul ([`super::PackedMatrix::pack_bf16`])
/// in the defined pair order, chunked as [`super::matmul_chunked`], for tests.
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
pub fn matmul_bf16_reference(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    bias: Option<&[f32]>,
    chunk: usize,
    output: ChunkOutput,
    y: &mut [f32],
) -> Result<(), KernelError> {
    check_len("w", mul("w", n, k)?, w.len())?;
    check_pair_chunk(k, chunk)?;
    let chunks = check_operands(x, m, k, n, bias, chunk, output, y.len())?;
    fold_chunks((m, n, k), bias, chunk, output, chunks, y, |i, j, lo, hi| {
        let at = |t: usize| {
            if t < hi {
                (
                    widen(round_bf16(x[i * k + t])),
                    widen(flush_bf16(w[j * k + t])),
                )
            } else {
                (0.0, 0.0)
            }
        };
        (lo..hi).step_by(2).fold(0.0f32, |s, kk| {
            let ((xe, we), (xo, wo)) = (at(kk), at(kk + 1));
            xe.mul_add(we, xo.mul_add(wo, s))
        })
    });
    Ok(())
}

/// Refuses chunks that would split a pair: below `k`, a chunk must be even.
pub(crate) fn check_pair_chunk(k: usize, chunk: usize) -> Result<(), KernelError> {
    if chunk < k && chunk % 2 == 1 {
        return Err(KernelError::Invalid {
            what: "chunk",
            reason: format!("bf16 weights reduce k in pairs; chunk {chunk} splits one"),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "pairs_tests.rs"]
mod tests;
