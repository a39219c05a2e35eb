//! Causal attention of one sequence's new tokens over its contiguous KV cache.
//!
//! ```text
//!  q    [t, hq, d]     rows are positions start .. start+t
//!  k, v [s, hkv, d]    cache rows 0 .. s, s >= start + t
//!  out  [t, hq, d]
//!
//!  query row r (position p = start + r), head h, kv head g = kv_index[h]:
//!    keys j in lo ..= p, lo = p + 1 - window (or 0)
//!    s_j = dot(q[r,h], k[j,g]) * 1/sqrt(d)        (the matmul's fixed dot order)
//!    e_j = exp(s_j - max s),  z = e_lo + ... + e_p  (in key order)
//!    out[r,h] = (Σ_j fma(e_j, v[j,g]) in key order) / z
//! ```
//!
//! Each (row, head) is computed alone from its position, so a row's output is the same
//! bits whether it arrives in a prefill of t tokens or in one-token decode, and whatever
//! the thread count.

use std::ops::Range;

use crate::axpy::axpy;
use crate::dot16::{gemm_cols, Operands};
use crate::error::{check_len, mul, KernelError};
use crate::isa::Isa;
use crate::pool::CpuPool;

/// Below this many score multiply-adds, attention runs on the caller's thread alone.
const PARALLEL_MIN_FMAS: usize = 1 << 15;

/// Shape of one attention call (the q heads are `kv_index.len()`).
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape<'a> {
    /// Number of new query tokens t.
    pub tokens: usize,
    /// Position of the first query token (cache rows before it are the past).
    pub start: usize,
    /// Width d of every head.
    pub head_dim: usize,
    /// Key/value heads per cache row (this rank's hkv).
    pub kv_heads: usize,
    /// For each local query head, the local kv head it reads (length = query heads).
    pub kv_index: &'a [usize],
    /// Attend only to keys with position > query position - window; `None` = all.
    pub window: Option<usize>,
}

/// Causal attention (softmax in f32, fixed key order): see the module picture for shapes.
pub fn attention(
    pool: &CpuPool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttentionShape<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_shape(q, k, v, shape, out)?;
    let items = shape.tokens * shape.kv_index.len();
    let work = items
        .saturating_mul(shape.start + shape.tokens)
        .saturating_mul(shape.head_dim);
    let isa = pool.isa();
    let out_ptr = OutPtr(out.as_mut_ptr());
    let job = |range: Range<usize>| {
        // SAFETY: `check_shape` verified every length, and each item writes only its own
        // head row of `out`; callers hand disjoint item ranges to different threads.
        unsafe { attend_items(isa, q, k, v, shape, &out_ptr, range) }
    };
    let threads = pool.threads();
    if threads == 1 || work < PARALLEL_MIN_FMAS {
        job(0..items);
    } else {
        pool.run(|thread| job(items * thread / threads..items * (thread + 1) / threads));
    }
    Ok(())
}

/// `out`'s base pointer, shared by the threads that write its disjoint head rows.
struct OutPtr(*mut f32);

// SAFETY: threads use the pointer only to write the head rows of their own items, which
// are disjoint, and `attention` holds the `&mut` borrow of `out` until they are done.
unsafe impl Sync for OutPtr {}

/// Fails unless every length and index agrees with `shape`.
fn check_shape(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttentionShape<'_>,
    out: &[f32],
) -> Result<(), KernelError> {
    let d = shape.head_dim;
    let hq = shape.kv_index.len();
    if d == 0 || shape.kv_heads == 0 {
        return Err(KernelError::Invalid {
            what: "attention shape",
            reason: format!(
                "head_dim ({d}) and kv_heads ({}) must be non-zero",
                shape.kv_heads
            ),
        });
    }
    if shape.window == Some(0) {
        return Err(KernelError::Invalid {
            what: "window",
            reason: "a window must hold at least the query's own position".into(),
        });
    }
    if let Some(&g) = shape.kv_index.iter().find(|&&g| g >= shape.kv_heads) {
        return Err(KernelError::Invalid {
            what: "kv_index",
            reason: format!("kv head {g} is not below kv_heads {}", shape.kv_heads),
        });
    }
    let q_len = mul("q", mul("q", shape.tokens, hq)?, d)?;
    check_len("q", q_len, q.len())?;
    check_len("out", q_len, out.len())?;
    check_len("v", k.len(), v.len())?;
    let cache_row = shape.kv_heads * d;
    let needed = mul("k", shape.start + shape.tokens, cache_row)?;
    if !k.len().is_multiple_of(cache_row) || k.len() < needed {
        return Err(KernelError::Invalid {
            what: "k",
            reason: format!(
                "cache of {} floats is not whole rows of {cache_row} covering {} positions",
                k.len(),
                shape.start + shape.tokens
            ),
        });
    }
    Ok(())
}

/// Attention for items `range` (item = row * hq + head), on the calling thread.
///
/// # Safety
/// Shapes must have passed `check_shape`, `out` must point to the checked output buffer,
/// no other thread may write these items' rows of it, and `isa` must be available.
unsafe fn attend_items(
    isa: Isa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &AttentionShape<'_>,
    out: &OutPtr,
    range: Range<usize>,
) {
    if range.is_empty() {
        return;
    }
    let d = shape.head_dim;
    let hq = shape.kv_index.len();
    let cache_row = shape.kv_heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0.0f32; shape.start + shape.tokens];
    let mut acc = vec![0.0f32; d];
    for item in range {
        let (row, head) = (item / hq, item % hq);
        let pos = shape.start + row;
        let lo = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let keys = pos + 1 - lo;
        let g = shape.kv_index[head];
        let q_row = &q[item * d..(item + 1) * d];
        let scores = &mut scores[..keys];
        let op = Operands {
            x: q_row.as_ptr(),
            ldx: d,
            m: 1,
            w: k[lo * cache_row + g * d..].as_ptr(),
            ldw: cache_row,
            k: d,
            bias: std::ptr::null(),
            y: scores.as_mut_ptr(),
            ldy: keys,
            chunk: usize::MAX,
            partial_stride: 0,
        };
        // SAFETY: key j < keys reads k[(lo + j) * cache_row + g*d ..][..d], inside k since
        // lo + j <= pos < start + t and the cache holds that many rows; the scores buffer
        // has `keys` entries and is ours alone.
        unsafe { gemm_cols(isa, &op, 0..keys) };
        let z = crate::exp::softmax_numerators(isa, scores, scale);
        acc.fill(0.0);
        for (j, &e) in scores.iter().enumerate() {
            let at = (lo + j) * cache_row + g * d;
            axpy(isa, e, &v[at..at + d], &mut acc);
        }
        // SAFETY: this item's head row of `out` is in bounds (checked) and only we write it.
        let out_row = unsafe { std::slice::from_raw_parts_mut(out.0.add(item * d), d) };
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = a / z;
        }
    }
}
