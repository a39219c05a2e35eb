//! Activations for block weights: every row of x rounded to i16 per 32-column block with
//! one f32 scale (`x ≈ dx * q`, `|q| <= 32767`), so that a block's dot product with any
//! block format is an exact integer sum and one f32 step.
//!
//! ```text
//!  per output o, row r, block b (the columns of b inside the chunk k0..k1):
//!    i   = Σ_j code_o[j] * q_r[j]            exact i32 (Q4_0 codes are nibble - 8)
//!    acc = fma(d_o * dx_rb, (f32) i, acc)     one f32 multiply, one fma
//!    acc = fma(m_o, dx_rb * (f32) Σ_j q_r[j], acc)   Q4_1 only (its min)
//! ```
//!
//! Every instruction-set path runs these steps, in block order from +0 at the chunk's first
//! column, so the bits do not depend on the path, the tile, the batch or the rank count.
//! The rounding is done once per row in scalar code (the same everywhere); i16 keeps the
//! activations within 2^-16 of the block's largest value, far closer than bf16.

use std::cell::RefCell;
use std::sync::Mutex;

use super::BLOCK;
use crate::isa::Isa;
use crate::pool::CpuPool;

/// Largest rounded magnitude.
const QMAX: f32 = 32767.0;
/// 1.5 * 2^23: `(t + ROUNDER) - ROUNDER` is `t` rounded to an integer, ties to even.
const ROUNDER: f32 = 12_582_912.0;

/// Rows of x rounded for block weights: `q` row-major (`k` per row), one scale and one
/// integer block sum per row and block (`k / 32` per row).
#[derive(Debug, Default)]
pub(crate) struct QuantRows {
    /// The rounded values.
    pub q: Vec<i16>,
    /// Each block's scale `dx`.
    pub d: Vec<f32>,
    /// Each block's `Σ q`.
    pub s: Vec<i32>,
}

impl QuantRows {
    /// Rounds `m` rows of `k` floats (`k` a multiple of 32) into `self`, reusing its buffers;
    /// many rows are split over the pool's threads (each row's result is the same anyway).
    pub(crate) fn fill(&mut self, pool: &CpuPool, x: &[f32], m: usize, k: usize) {
        debug_assert!(k.is_multiple_of(BLOCK) && x.len() >= m * k);
        let blocks = k / BLOCK;
        self.q.resize(m * k, 0);
        self.d.resize(m * blocks, 0.0);
        self.s.resize(m * blocks, 0);
        let (threads, isa) = (pool.threads(), pool.isa());
        if threads == 1 || m * k < PARALLEL_MIN_VALUES {
            round_rows(isa, &x[..m * k], &mut self.q, &mut self.d, &mut self.s);
            return;
        }
        // Each thread takes a contiguous run of rows, behind its own lock.
        let mut shares = Vec::with_capacity(threads);
        let (mut q, mut d, mut s) = (&mut self.q[..], &mut self.d[..], &mut self.s[..]);
        let mut x = &x[..m * k];
        for t in 0..threads {
            let rows = m * (t + 1) / threads - m * t / threads;
            let (qt, qr) = std::mem::take(&mut q).split_at_mut(rows * k);
            let (dt, dr) = std::mem::take(&mut d).split_at_mut(rows * blocks);
            let (st, sr) = std::mem::take(&mut s).split_at_mut(rows * blocks);
            let (xt, xr) = x.split_at(rows * k);
            (q, d, s, x) = (qr, dr, sr, xr);
            shares.push(Mutex::new((xt, qt, dt, st)));
        }
        pool.run(|t| {
            let mut share = shares[t].lock().unwrap_or_else(|e| e.into_inner());
            let (xt, qt, dt, st) = &mut *share;
            round_rows(isa, xt, qt, dt, st);
        });
    }
}

/// Below this many values the rounding runs on the calling thread alone.
const PARALLEL_MIN_VALUES: usize = 1 << 15;

/// Rounds whole rows `x` into `q`, with each block's scale in `d` and sum in `s`: the one
/// portable body, compiled for the widest vectors `isa` has. Its steps are plain IEEE
/// operations that Rust never contracts into fmas, so every build gives the same bits.
fn round_rows(isa: Isa, x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [i32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the pool checked that the CPU has the features of `isa`.
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { round_rows_avx512(x, q, d, s) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { round_rows_avx2(x, q, d, s) },
        _ => round_body(x, q, d, s),
    }
}

/// [`round_body`] compiled for AVX-512.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
unsafe fn round_rows_avx512(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [i32]) {
    round_body(x, q, d, s);
}

/// [`round_body`] compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn round_rows_avx2(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [i32]) {
    round_body(x, q, d, s);
}

/// The rounding itself, inlined into each instruction-set wrapper.
#[inline(always)]
fn round_body(x: &[f32], q: &mut [i16], d: &mut [f32], s: &mut [i32]) {
    let rows = x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK));
    for ((xb, qb), (d, s)) in rows.zip(d.iter_mut().zip(s.iter_mut())) {
        // A select, not `f32::max`, so that the reduction vectorizes; a NaN anywhere in the
        // block makes the scale NaN, so it reaches the outputs as f32 sums would.
        let amax = xb
            .iter()
            .fold(0.0f32, |a, v| if v.abs() > a { v.abs() } else { a });
        let nan = xb.iter().fold(false, |n, v| n | v.is_nan());
        let dx = if nan { f32::NAN } else { amax / QMAX };
        let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
        for (q, v) in qb.iter_mut().zip(xb) {
            // Adding and taking away 1.5 * 2^23 rounds |t| < 2^22 to the nearest integer,
            // ties to even, in plain f32 steps that vectorize (`round` is a libm call).
            // `as` saturates and maps NaN to 0.
            *q = ((v * inv + ROUNDER) - ROUNDER) as i16;
        }
        *d = dx;
        *s = qb.iter().map(|&q| i32::from(q)).sum();
    }
}

thread_local! {
    /// Each thread's rounded rows, grown to the largest request and kept.
    static ROWS: RefCell<QuantRows> = RefCell::new(QuantRows::default());
}

/// Calls `f` with `m` rows of `k` floats rounded for block weights (this thread's buffers).
pub(crate) fn with_quantized<R>(
    pool: &CpuPool,
    x: &[f32],
    m: usize,
    k: usize,
    f: impl FnOnce(&QuantRows) -> R,
) -> R {
    ROWS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut rows) => {
            rows.fill(pool, x, m, k);
            f(&rows)
        }
        Err(_) => {
            let mut rows = QuantRows::default();
            rows.fill(pool, x, m, k);
            f(&rows)
        }
    })
}

/// One row's operands for one block, limited to a chunk's columns.
#[derive(Clone, Copy)]
pub(crate) struct BlockX {
    /// 32 rounded values (zeros outside the chunk).
    pub q: *const i16,
    /// The block's scale.
    pub dx: f32,
    /// `dx * Σ q` over the chunk's columns (the Q4_1 min's factor).
    pub sx: f32,
}

/// Row `r`'s operands for block `b` restricted to columns `k0..k1` (`q` at `xq`, scales and
/// sums at `xd`/`xs`, rows `ldx` values and `ldx / 32` blocks apart). A block cut by the
/// chunk is copied into `tmp` with the columns outside it zeroed.
///
/// # Safety
/// Row r must hold block b (`32 (b + 1) <= ldx`) at all three pointers.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "the tile's x operands, passed apart so each kernel reads them the same way"
)]
pub(crate) unsafe fn block_x(
    xq: *const i16,
    xd: *const f32,
    xs: *const i32,
    ldx: usize,
    r: usize,
    b: usize,
    k0: usize,
    k1: usize,
    tmp: &mut [i16; BLOCK],
) -> BlockX {
    let at = r * (ldx / BLOCK) + b;
    // SAFETY: block b of row r exists (contract).
    let (q, dx, s) = unsafe { (xq.add(r * ldx + b * BLOCK), *xd.add(at), *xs.add(at)) };
    let (lo, hi) = (b * BLOCK, (b + 1) * BLOCK);
    if k0 <= lo && hi <= k1 {
        return BlockX {
            q,
            dx,
            sx: dx * s as f32,
        };
    }
    let mut sum = 0i32;
    for (j, t) in tmp.iter_mut().enumerate() {
        // SAFETY: j < 32 is inside the block.
        *t = if (k0..k1).contains(&(lo + j)) {
            unsafe { *q.add(j) }
        } else {
            0
        };
        sum += i32::from(*t);
    }
    BlockX {
        q: tmp.as_ptr(),
        dx,
        sx: dx * sum as f32,
    }
}
