//! The bf16 key/value pool's kernels (`cuda/decode_attention.cu`): keys and values
//! rounded to bf16 as they are written, and attention that reads each key/value head once
//! for all the query heads of its GQA group, with a split count per row.
//!
//! ```text
//!   row i: keys 0..=pos_i cut into splits[i] chunks   (splits from the batch and SM count)
//!   partials of row i: part_off[i] .. part_off[i] + heads * splits[i]
//!   part_off = prefix sums of heads * splits          (scratch sized by the step's rows)
//! ```
//!
//! Decode rows (one new token of a sequence) run the grouped split kernel; the rows of a
//! prompt run the tiled prefill kernel over the same pool (`prefill_attention_bf16`).

use cudarc::driver::CudaSlice;

use super::attention::{refill, score_scale, AttentionRows, AttentionScratch, PoolShape};
use super::i32_of;
use crate::device::{Arg, Gpu};
use crate::error::{ensure, CudaError};

/// Fewest keys a split of the decode kernel takes (a warp then reads at least 16).
pub const MIN_SPLIT_KEYS: usize = 64;

/// Most splits of one row (the kernel's partials stay bounded for long contexts).
pub const MAX_ROW_SPLITS: usize = 64;

/// Most query heads per key/value head the kernel holds (`DA_MAX_GROUP`).
pub const MAX_GROUP: usize = 8;

/// Split counts of rows at `positions`: enough blocks to fill `sms` multiprocessors about
/// twice over (grid: rows x `kv_heads` x splits), never a split under
/// [`MIN_SPLIT_KEYS`] keys, at most [`MAX_ROW_SPLITS`].
pub fn row_splits(positions: &[i32], kv_heads: usize, sms: usize) -> Vec<i32> {
    let per_row = (2 * sms.max(1)).div_ceil(positions.len().max(1) * kv_heads.max(1));
    positions
        .iter()
        .map(|&p| {
            let keys = p.max(0) as usize + 1;
            let most = keys.div_ceil(MIN_SPLIT_KEYS);
            per_row.min(most).clamp(1, MAX_ROW_SPLITS) as i32
        })
        .collect()
}

/// Each row's split count and partials offset, built on the host and copied once per
/// step into device buffers kept between steps.
pub struct DecodeSplits {
    /// Rows (items) the lists describe.
    pub items: usize,
    /// The largest split count of any row (the grid's third dimension).
    pub max_splits: usize,
    /// Partials of the whole step (per key/value width `d` in the accumulator).
    pub parts: usize,
    /// Query heads the offsets leave room for (at least any layer's on this rank).
    pub heads: usize,
    row_ids: CudaSlice<i32>,
    row_splits: CudaSlice<i32>,
    part_off: CudaSlice<i32>,
}

impl DecodeSplits {
    /// Lists of no step yet.
    pub fn empty(gpu: &Gpu) -> Result<Self, CudaError> {
        Ok(Self {
            items: 0,
            max_splits: 0,
            parts: 0,
            heads: 0,
            row_ids: gpu.zeros(1)?,
            row_splits: gpu.zeros(1)?,
            part_off: gpu.zeros(1)?,
        })
    }

    /// The decode rows of `rows` as items, with [`row_splits`] splits and room for
    /// `heads` query heads; says whether a device buffer moved.
    pub fn fill(
        &mut self,
        gpu: &Gpu,
        rows: &AttentionRows,
        heads: usize,
        kv_heads: usize,
        sms: usize,
    ) -> Result<bool, CudaError> {
        let ids = &rows.host_decode_rows;
        let positions: Vec<i32> = ids
            .iter()
            .map(|&r| rows.host_positions.get(r as usize).copied().unwrap_or(0))
            .collect();
        let splits = row_splits(&positions, kv_heads, sms);
        let mut off = Vec::with_capacity(splits.len());
        let mut total = 0usize;
        for &s in &splits {
            off.push(i32_of("decode_attention", total)?);
            total += heads * s as usize;
        }
        i32_of("decode_attention", total)?;
        let mut moved = refill(gpu, ids, &mut self.row_ids)?;
        moved |= refill(gpu, &splits, &mut self.row_splits)?;
        moved |= refill(gpu, &off, &mut self.part_off)?;
        self.items = splits.len();
        self.max_splits = splits.iter().copied().max().unwrap_or(0) as usize;
        self.parts = total;
        self.heads = heads;
        Ok(moved)
    }
}

/// One layer's heads as the grouped decode kernel reads them.
#[derive(Clone, Copy)]
pub struct GroupedHeads<'a> {
    /// Width of every head.
    pub head_dim: usize,
    /// Key/value heads in the pool (this rank's).
    pub kv_heads: usize,
    /// Query heads per key/value head (1..=[`MAX_GROUP`]).
    pub group: usize,
    /// `group_heads[kvh * group + g]`: the g-th query head of key/value head kvh.
    pub group_heads: &'a CudaSlice<i32>,
    /// Tokens per block.
    pub block_size: usize,
    /// Sliding window (`None`: all keys).
    pub window: Option<usize>,
}

/// Causal attention of every decode row of `rows` (query heads at columns `q_col..` of
/// rows of `q_stride` in `q`) over the bf16 pool, split as `splits` says, partials in
/// `scratch` (room for `splits.parts`); writes `out[row][head * d..]`.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention(
    gpu: &Gpu,
    q: &CudaSlice<f32>,
    q_stride: usize,
    q_col: usize,
    k_cache: &CudaSlice<u16>,
    v_cache: &CudaSlice<u16>,
    rows: &AttentionRows,
    splits: &DecodeSplits,
    heads: &GroupedHeads<'_>,
    scratch: &AttentionScratch,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (d, group, hkv) = (heads.head_dim, heads.group, heads.kv_heads);
    let hq = hkv * group;
    check_decode(q, q_stride, q_col, rows, splits, heads, scratch, out)?;
    if splits.items == 0 || hq == 0 {
        return Ok(());
    }
    let scale = score_scale(d);
    gpu.launch(
        "decode_attention_bf16",
        (splits.items as u32, hkv as u32, splits.max_splits as u32),
        128,
        &[
            Arg::Ptr(gpu.ptr(q)),
            Arg::I32(i32_of("decode_attention", q_stride)?),
            Arg::I32(i32_of("decode_attention", q_col)?),
            Arg::Ptr(gpu.ptr(k_cache)),
            Arg::Ptr(gpu.ptr(v_cache)),
            Arg::Ptr(gpu.ptr(&rows.tables)),
            Arg::Ptr(gpu.ptr(&rows.table_off)),
            Arg::Ptr(gpu.ptr(&rows.positions)),
            Arg::Ptr(gpu.ptr(&splits.row_ids)),
            Arg::Ptr(gpu.ptr(&splits.row_splits)),
            Arg::Ptr(gpu.ptr(&splits.part_off)),
            Arg::Ptr(gpu.ptr(heads.group_heads)),
            Arg::I32(group as i32),
            Arg::I32(d as i32),
            Arg::I32(hkv as i32),
            Arg::I32(i32_of("decode_attention", heads.block_size)?),
            Arg::I32(i32_of("decode_attention", heads.window.unwrap_or(0))?),
            Arg::F32(scale),
            Arg::Ptr(gpu.ptr(&scratch.part_m)),
            Arg::Ptr(gpu.ptr(&scratch.part_l)),
            Arg::Ptr(gpu.ptr(&scratch.part_acc)),
        ],
    )?;
    gpu.launch(
        "decode_attention_combine_f32",
        (splits.items as u32, hq as u32, 1),
        (d.div_ceil(32) * 32) as u32,
        &[
            Arg::Ptr(gpu.ptr(&scratch.part_m)),
            Arg::Ptr(gpu.ptr(&scratch.part_l)),
            Arg::Ptr(gpu.ptr(&scratch.part_acc)),
            Arg::Ptr(gpu.ptr(&splits.row_ids)),
            Arg::Ptr(gpu.ptr(&splits.row_splits)),
            Arg::Ptr(gpu.ptr(&splits.part_off)),
            Arg::Ptr(gpu.ptr(heads.group_heads)),
            Arg::I32(d as i32),
            Arg::Ptr(gpu.ptr(out)),
        ],
    )
}

/// Tiled causal attention of the prefill tiles of `rows` over the bf16 pool (same
/// layout and arguments as the f32 pool's tiles in [`super::paged_attention`]).
#[allow(clippy::too_many_arguments)]
pub fn prefill_attention_bf16(
    gpu: &Gpu,
    q: &CudaSlice<f32>,
    q_stride: usize,
    q_col: usize,
    k_cache: &CudaSlice<u16>,
    v_cache: &CudaSlice<u16>,
    rows: &AttentionRows,
    shape: &PoolShape<'_>,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (d, hq) = (shape.head_dim, shape.q_heads);
    ensure(
        d > 0
            && d <= 256
            && shape.kv_index.len() >= hq
            && q_col + hq * d <= q_stride
            && q.len() >= rows.rows * q_stride
            && out.len() >= rows.rows * hq * d,
        "prefill_attention_bf16",
        || format!("{hq} heads of {d}"),
    )?;
    if rows.tile_count == 0 || hq == 0 {
        return Ok(());
    }
    gpu.launch(
        "prefill_attention_bf16",
        (rows.tile_count as u32, hq as u32, 1),
        128,
        &[
            Arg::Ptr(gpu.ptr(q)),
            Arg::I32(i32_of("prefill_attention_bf16", q_stride)?),
            Arg::I32(i32_of("prefill_attention_bf16", q_col)?),
            Arg::Ptr(gpu.ptr(k_cache)),
            Arg::Ptr(gpu.ptr(v_cache)),
            Arg::Ptr(gpu.ptr(&rows.tables)),
            Arg::Ptr(gpu.ptr(&rows.table_off)),
            Arg::Ptr(gpu.ptr(&rows.positions)),
            Arg::Ptr(gpu.ptr(&rows.tile_first)),
            Arg::Ptr(gpu.ptr(&rows.tile_rows)),
            Arg::Ptr(gpu.ptr(shape.kv_index)),
            Arg::I32(d as i32),
            Arg::I32(i32_of("prefill_attention_bf16", shape.kv_heads)?),
            Arg::I32(i32_of("prefill_attention_bf16", shape.block_size)?),
            Arg::I32(i32_of("prefill_attention_bf16", shape.window.unwrap_or(0))?),
            Arg::F32(score_scale(d)),
            Arg::Ptr(gpu.ptr(out)),
        ],
    )
}

/// The shape checks of [`decode_attention`].
#[allow(clippy::too_many_arguments)]
fn check_decode(
    q: &CudaSlice<f32>,
    q_stride: usize,
    q_col: usize,
    rows: &AttentionRows,
    splits: &DecodeSplits,
    heads: &GroupedHeads<'_>,
    scratch: &AttentionScratch,
    out: &CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (d, group, hkv) = (heads.head_dim, heads.group, heads.kv_heads);
    let hq = hkv * group;
    ensure(
        d > 0 && d <= 256 && (1..=MAX_GROUP).contains(&group),
        "decode_attention",
        || format!("head_dim {d} must be 1..=256 and the group {group} 1..={MAX_GROUP}"),
    )?;
    ensure(
        heads.group_heads.len() >= hq
            && q_col + hq * d <= q_stride
            && q.len() >= rows.rows * q_stride
            && out.len() >= rows.rows * hq * d,
        "decode_attention",
        || format!("{hkv} kv heads of {group} query heads of {d}"),
    )?;
    ensure(
        splits.items == rows.decode_count
            && hq <= splits.heads
            && scratch.part_m.len() >= splits.parts
            && scratch.part_l.len() >= splits.parts
            && scratch.part_acc.len() >= splits.parts * d,
        "decode_attention",
        || {
            format!(
                "splits for {} rows of {} heads, {} partials; scratch holds {}",
                splits.items,
                splits.heads,
                splits.parts,
                scratch.part_m.len()
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_splits_fill_the_gpu_but_never_cut_a_split_under_min_keys() {
        // One row of 4096 keys, 8 kv heads, 132 SMs: 33 splits wanted, 64 allowed.
        assert_eq!(row_splits(&[4095], 8, 132), vec![33]);
        // Short rows stay whole; long ones are capped.
        assert_eq!(row_splits(&[0, 63, 64], 8, 132), vec![1, 1, 2]);
        assert_eq!(
            row_splits(&[1 << 20], 1, 10_000),
            vec![MAX_ROW_SPLITS as i32]
        );
        // A full batch already fills the GPU: one split per row.
        assert_eq!(row_splits(&vec![4095; 256], 8, 132), vec![1; 256]);
    }
}
