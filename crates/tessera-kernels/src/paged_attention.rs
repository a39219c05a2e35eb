//! Causal attention of a batch of sequences over a paged key/value cache.
//!
//! ```text
//!  q, out  [T, hq, d]                 rows of all sequences, one after another
//!  k, v    [block][slot][hkv][d]      the rank's block pool for one layer
//!  seq s:  rows s.row .. s.row + s.tokens at positions s.start ..,
//!          position p of s lives at slot table[p / bs] * bs + p % bs
//! ```
//!
//! For every (row, head) the keys are visited in position order, each score is the same
//! fixed-order 16-lane dot product (`dot16`), and the softmax and value sums run in key order.
//! Keys are read block by block, but no sum spans a block boundary differently: a row's
//! output is bit-identical to the contiguous [`crate::attention`] on the same keys, and
//! independent of the other sequences in the batch, its position in it, how its prompt was
//! chunked and the thread count.
//!
//! The pool may hold bf16 keys and values ([`paged_attention_bf16`]): they are widened
//! exactly to f32 where they are read, so the output is bit-identical to the f32 kernel on
//! the bf16-rounded cache.

use std::ops::Range;

use half::bf16;

use crate::axpy::{prefetch_row, weighted_sum, weighted_sum_heads};
use crate::dot16::{gemm_cols, Operands};
use crate::error::{check_len, mul, KernelError};
use crate::exp::softmax_numerators;
use crate::isa::Isa;
use crate::matmul::Elem;
use crate::pool::CpuPool;

/// Below this many score multiply-adds, attention runs on the caller's thread alone.
const PARALLEL_MIN_FMAS: usize = 1 << 15;

/// One sequence's rows in a [`paged_attention`] call.
#[derive(Debug, Clone, Copy)]
pub struct PagedSeq<'a> {
    /// First row of this sequence in `q` and `out` (rows of sequences are consecutive).
    pub row: usize,
    /// New query tokens (rows).
    pub tokens: usize,
    /// Position of the first new token; positions `0..start + tokens` are in the cache.
    pub start: usize,
    /// Cache blocks of the sequence in position order.
    pub block_table: &'a [u32],
}

/// Shape shared by every sequence of a [`paged_attention`] call.
#[derive(Debug, Clone, Copy)]
pub struct PagedShape<'a> {
    /// Width d of every head.
    pub head_dim: usize,
    /// Key/value heads per cache slot (this rank's hkv).
    pub kv_heads: usize,
    /// For each local query head, the local kv head it reads (length = query heads).
    pub kv_index: &'a [usize],
    /// Attend only to keys with position > query position - window; `None` = all.
    pub window: Option<usize>,
    /// Tokens per cache block.
    pub block_size: usize,
}

/// Causal paged attention (softmax in f32, fixed key order): see the module picture.
pub fn paged_attention(
    pool: &CpuPool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seqs: &[PagedSeq<'_>],
    shape: &PagedShape<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    paged_attention_in(pool, q, k, v, seqs, shape, out)
}

/// [`paged_attention`] over a pool of bf16 keys and values (half the bytes to read).
pub fn paged_attention_bf16(
    pool: &CpuPool,
    q: &[f32],
    k: &[bf16],
    v: &[bf16],
    seqs: &[PagedSeq<'_>],
    shape: &PagedShape<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    paged_attention_in(pool, q, k, v, seqs, shape, out)
}

/// [`paged_attention`] for either storage of the pool.
fn paged_attention_in<E: Elem>(
    pool: &CpuPool,
    q: &[f32],
    k: &[E],
    v: &[E],
    seqs: &[PagedSeq<'_>],
    shape: &PagedShape<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(q, k, v, seqs, shape, out)?;
    let hq = shape.kv_index.len();
    // Work units: (sequence, head, chunk of up to ROW_CHUNK rows). A unit's scores are one
    // matmul of its query rows against its keys; each score is still the same fixed-order
    // dot product, so results equal a row-by-row computation bit for bit.
    let mut units = Vec::new();
    let mut cost = Vec::new();
    let mut total = 0usize;
    for (si, s) in seqs.iter().enumerate() {
        if s.tokens == 1 {
            // Decode: the query heads that share a key/value head run together, so each
            // key and value row is read once for the whole group.
            let mut head = 0;
            while head < hq {
                let mut heads = 1;
                while head + heads < hq
                    && heads < MAX_GROUP
                    && shape.kv_index[head + heads] == shape.kv_index[head]
                {
                    heads += 1;
                }
                units.push(Unit {
                    seq: si,
                    head,
                    heads,
                    r0: 0,
                    r1: 1,
                });
                total = total.saturating_add(heads * (s.start + 1));
                cost.push(total);
                head += heads;
            }
            continue;
        }
        for head in 0..hq {
            let mut r0 = 0;
            while r0 < s.tokens {
                let r1 = (r0 + ROW_CHUNK).min(s.tokens);
                units.push(Unit {
                    seq: si,
                    head,
                    heads: 1,
                    r0,
                    r1,
                });
                total = total.saturating_add((r1 - r0) * (s.start + r1));
                cost.push(total);
                r0 = r1;
            }
        }
    }
    let isa = pool.isa();
    let out_ptr = OutPtr(out.as_mut_ptr());
    let job = |range: Range<usize>| {
        // SAFETY: `check` verified every length, block id and table; each unit writes only
        // its own rows of its own head in `out`, and threads get disjoint unit ranges.
        unsafe { attend_units(isa, q, k, v, seqs, shape, &out_ptr, &units[range]) }
    };
    let threads = pool.threads();
    if threads == 1 || total.saturating_mul(shape.head_dim) < PARALLEL_MIN_FMAS {
        job(0..units.len());
    } else {
        // Contiguous unit ranges of about equal cost.
        let bound = |t: usize| cost.partition_point(|&c| c * threads <= total * t);
        pool.run(|t| job(bound(t)..bound(t + 1)));
    }
    Ok(())
}

/// Query rows per work unit: bounds the scores buffer and the causal waste of a chunk.
const ROW_CHUNK: usize = 64;

/// Most query heads a decode unit groups over one key/value head.
const MAX_GROUP: usize = 8;

/// Rows `r0..r1` of heads `head..head + heads` of one sequence (`heads > 1` only for a
/// decode row, whose heads then share one key/value head and sit side by side in `q`).
#[derive(Debug, Clone, Copy)]
struct Unit {
    seq: usize,
    head: usize,
    heads: usize,
    r0: usize,
    r1: usize,
}

/// `out`'s base pointer, shared by the threads that write its disjoint head rows.
struct OutPtr(*mut f32);

// SAFETY: threads use the pointer only to write the head rows of their own items, which
// are disjoint, and `paged_attention` holds the `&mut` borrow of `out` until they are done.
unsafe impl Sync for OutPtr {}

/// Checks every length, row offset and block table; returns the number of rows.
fn check<E>(
    q: &[f32],
    k: &[E],
    v: &[E],
    seqs: &[PagedSeq<'_>],
    shape: &PagedShape<'_>,
    out: &[f32],
) -> Result<usize, KernelError> {
    let d = shape.head_dim;
    let hq = shape.kv_index.len();
    let invalid = |what: &'static str, reason: String| KernelError::Invalid { what, reason };
    if d == 0 || shape.kv_heads == 0 || shape.block_size == 0 {
        return Err(invalid(
            "paged attention shape",
            format!(
                "head_dim ({d}), kv_heads ({}) and block_size ({}) must be non-zero",
                shape.kv_heads, shape.block_size
            ),
        ));
    }
    if shape.window == Some(0) {
        return Err(invalid(
            "window",
            "a window must hold at least the query's own position".into(),
        ));
    }
    if let Some(&g) = shape.kv_index.iter().find(|&&g| g >= shape.kv_heads) {
        return Err(invalid(
            "kv_index",
            format!("kv head {g} is not below kv_heads {}", shape.kv_heads),
        ));
    }
    let slot = mul("k", shape.kv_heads, d)?;
    let block = mul("k", slot, shape.block_size)?;
    check_len("v", k.len(), v.len())?;
    if !k.len().is_multiple_of(block) {
        return Err(invalid(
            "k",
            format!("{} values are not whole blocks of {block}", k.len()),
        ));
    }
    let num_blocks = k.len() / block;
    let mut rows = 0usize;
    for (i, s) in seqs.iter().enumerate() {
        if s.row != rows {
            return Err(invalid(
                "seqs",
                format!(
                    "sequence {i} starts at row {} but the rows before it end at {rows}",
                    s.row
                ),
            ));
        }
        let end = s.start + s.tokens;
        if s.block_table.len() * shape.block_size < end {
            return Err(invalid(
                "block_table",
                format!(
                    "sequence {i}: {} blocks cannot hold {end} positions",
                    s.block_table.len()
                ),
            ));
        }
        if let Some(&b) = s.block_table.iter().find(|&&b| b as usize >= num_blocks) {
            return Err(invalid(
                "block_table",
                format!("sequence {i}: block {b} is outside the pool of {num_blocks}"),
            ));
        }
        rows += s.tokens;
    }
    let q_len = mul("q", mul("q", rows, hq)?, d)?;
    check_len("q", q_len, q.len())?;
    check_len("out", q_len, out.len())?;
    Ok(rows)
}

/// Attention for `units`, on the calling thread.
///
/// # Safety
/// Arguments must have passed `check`, `out` must point to the checked output buffer, no
/// other thread may write these units' rows of it, and `isa` must be available.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_units<E: Elem>(
    isa: Isa,
    q: &[f32],
    k: &[E],
    v: &[E],
    seqs: &[PagedSeq<'_>],
    shape: &PagedShape<'_>,
    out: &OutPtr,
    units: &[Unit],
) {
    let d = shape.head_dim;
    let hq = shape.kv_index.len();
    let bs = shape.block_size;
    let slot_width = shape.kv_heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores: Vec<f32> = Vec::new();
    let mut acc = vec![0.0f32; d];
    let mut offs: Vec<usize> = Vec::new();
    let mut group_acc: Vec<f32> = Vec::new();
    for u in units {
        let s = &seqs[u.seq];
        let g = shape.kv_index[u.head];
        let keys = UnitKeys::of(u, s, shape);
        let UnitKeys {
            rows,
            first_pos,
            lo_min,
            hi,
            ..
        } = keys;
        let nkeys = hi - lo_min;
        scores.clear();
        scores.resize(rows * nkeys, 0.0);
        offs.clear();
        offs.extend(
            (lo_min..hi)
                .map(|p| (s.block_table[p / bs] as usize * bs + p % bs) * slot_width + g * d),
        );
        // SAFETY: the offsets come from the checked block table; see `score_keys`.
        unsafe { score_keys(isa, q, (k, v), shape, &keys, &offs, &mut scores) };
        if u.heads > 1 {
            // One decode token, several heads over the same keys: softmax each head's row,
            // then one pass over the value rows for all of them.
            let pos = first_pos;
            let lo = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let (a, b) = (lo - lo_min, pos + 1 - lo_min);
            let mut zs = [0.0f32; MAX_GROUP];
            for (i, z) in zs.iter_mut().enumerate().take(rows) {
                *z = softmax_numerators(isa, &mut scores[i * nkeys + a..i * nkeys + b], scale);
            }
            group_acc.clear();
            group_acc.resize(rows * d, 0.0);
            // SAFETY: offsets come from the checked block table (see above); the weight rows
            // are `nkeys` apart and each holds b - a weights from `a`.
            unsafe {
                weighted_sum_heads(
                    isa,
                    &scores[a..],
                    nkeys,
                    b - a,
                    v,
                    &offs[a..],
                    d,
                    &mut group_acc,
                )
            };
            for (i, acc) in group_acc.chunks_exact(d).enumerate() {
                let item = (s.row + u.r0) * hq + u.head + i;
                // SAFETY: this (row, head) of `out` is in bounds (checked) and only this
                // unit writes it.
                let out_row = unsafe { std::slice::from_raw_parts_mut(out.0.add(item * d), d) };
                for (o, &a) in out_row.iter_mut().zip(acc) {
                    *o = a / zs[i];
                }
            }
            continue;
        }
        for i in 0..rows {
            let pos = first_pos + i;
            let lo = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let row_scores = &mut scores[i * nkeys + (lo - lo_min)..i * nkeys + (pos + 1 - lo_min)];
            let z = softmax_numerators(isa, row_scores, scale);
            acc.fill(0.0);
            // SAFETY: every offset was computed from the sequence's checked block table, so
            // v[off .. off + d] lies inside the pool; `isa` is the pool's.
            unsafe { weighted_sum(isa, row_scores, v, &offs[lo - lo_min..], &mut acc) };
            let item = (s.row + u.r0 + i) * hq + u.head;
            // SAFETY: this (row, head) of `out` is in bounds (checked) and only this unit
            // writes it.
            let out_row = unsafe { std::slice::from_raw_parts_mut(out.0.add(item * d), d) };
            for (o, &a) in out_row.iter_mut().zip(&acc) {
                *o = a / z;
            }
        }
    }
}

/// The query rows and keys of one unit, as [`score_keys`] reads them.
#[derive(Clone, Copy)]
struct UnitKeys {
    /// Query rows: token rows of one head, or one token's heads (`multi_head`).
    rows: usize,
    /// Floats between consecutive query rows in `q`.
    q_stride: usize,
    /// Offset of the first query row in `q`.
    q_base: usize,
    /// Position of the first query row's token.
    first_pos: usize,
    /// Keys `lo_min..hi` are scored (`offs[p - lo_min]` locates key `p`).
    lo_min: usize,
    hi: usize,
    /// One decode token's several heads over the same keys.
    multi_head: bool,
}

impl UnitKeys {
    /// The query rows and keys of unit `u` of sequence `s`.
    fn of(u: &Unit, s: &PagedSeq<'_>, shape: &PagedShape<'_>) -> Self {
        let d = shape.head_dim;
        let hq = shape.kv_index.len();
        let first_pos = s.start + u.r0;
        Self {
            // Its token rows (one head), or one token's `heads` heads.
            rows: (u.r1 - u.r0) * u.heads,
            q_stride: if u.heads > 1 { d } else { hq * d },
            q_base: ((s.row + u.r0) * hq + u.head) * d,
            first_pos,
            lo_min: shape
                .window
                .map_or(0, |w| (first_pos + 1).saturating_sub(w)),
            hi: s.start + u.r1,
            multi_head: u.heads > 1,
        }
    }
}

/// Scores the unit's query rows against its keys, block by block (keys in one block are
/// evenly strided), into `scores` (row `i`, key `p` at `i * nkeys + p - lo_min`).
///
/// # Safety
/// As [`attend_units`]; `offs` holds the offsets of keys `lo_min..hi` computed from the
/// checked block table (of `k` and `v` alike), and `scores` holds `rows * (hi - lo_min)`
/// floats.
unsafe fn score_keys<E: Elem>(
    isa: Isa,
    q: &[f32],
    (k, v): (&[E], &[E]),
    shape: &PagedShape<'_>,
    u: &UnitKeys,
    offs: &[usize],
    scores: &mut [f32],
) {
    let (d, bs) = (shape.head_dim, shape.block_size);
    let nkeys = u.hi - u.lo_min;
    let mut j = u.lo_min;
    while j < u.hi {
        let run = (bs - j % bs).min(u.hi - j);
        let base = offs[j - u.lo_min];
        // Prefill rows whose keys in this run are all masked (later keys, or keys
        // behind the window) are not scored: their softmax never reads those scores.
        let live = if u.multi_head {
            0..u.rows
        } else {
            live_rows(u.first_pos, u.rows, j, run, shape.window)
        };
        if live.is_empty() {
            j += run;
            continue;
        }
        // While this run is scored, ask for the next run's key rows (another block,
        // which the tiles' own prefetch does not reach) and, for a decode unit, this
        // run's value rows, which the value sum reads right after the softmax.
        let next = (j + run).min(u.hi)..(j + run + bs).min(u.hi);
        for &off in &offs[next.start - u.lo_min..next.end - u.lo_min] {
            prefetch_row(k, off, d);
        }
        if u.multi_head {
            for &off in &offs[j - u.lo_min..j + run - u.lo_min] {
                prefetch_row(v, off, d);
            }
        }
        let op = Operands {
            x: q[u.q_base + live.start * u.q_stride..].as_ptr(),
            ldx: u.q_stride,
            m: live.len(),
            w: k[base..].as_ptr(),
            ldw: shape.kv_heads * d,
            k: d,
            bias: std::ptr::null(),
            y: scores[live.start * nkeys + j - u.lo_min..].as_mut_ptr(),
            ldy: nkeys,
            chunk: usize::MAX,
            partial_stride: 0,
        };
        // SAFETY: query row i (in `live`, inside 0..rows) reads q[q_base + i*q_stride
        // ..][..d]: the unit's token rows of one head, or one token's adjacent heads,
        // inside q (checked rows); key c < run reads k[base + c*slot_width ..][..d],
        // inside block table[j / bs]; output (i, c) lands in
        // scores[i*nkeys + (j - lo_min) + c] < rows * nkeys.
        unsafe { gemm_cols(isa, &op, 0..run) };
        j += run;
    }
}

/// The rows of a one-head prefill unit (row i at position `first_pos + i`) that attend to
/// at least one key of positions `j .. j + run`: position >= j, and (with a window) the
/// window's first key `pos + 1 - window` <= j + run - 1. Rows are in position order, so
/// these form one range.
fn live_rows(
    first_pos: usize,
    rows: usize,
    j: usize,
    run: usize,
    window: Option<usize>,
) -> Range<usize> {
    let start = j.saturating_sub(first_pos).min(rows);
    let end = window.map_or(rows, |w| {
        (j + run + w - 1).saturating_sub(first_pos).min(rows)
    });
    start..end.max(start)
}

#[cfg(test)]
#[path = "paged_attention_tests.rs"]
mod tests;
