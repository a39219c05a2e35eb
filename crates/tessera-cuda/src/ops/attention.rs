//! Paged attention over the key/value block pool: the rows of a step as the kernels read
//! them ([`AttentionRows`]), the f32 pool's kernels (`cuda/paged_attention.cu`) and the
//! bf16 pool's grouped decode kernels (`cuda/decode_attention.cu`).

use cudarc::driver::CudaSlice;

use super::host_rows::HostRows;
use super::i32_of;
use crate::device::{Arg, Gpu};
use crate::error::{ensure, CudaError};

/// Rows of a tiled prefill block (`cuda/paged_attention.cu`, `PF_ROWS`).
pub const PREFILL_TILE_ROWS: usize = 16;

/// Rows a step pads to so that a CUDA graph of a fixed shape can run it.
#[derive(Clone, Copy, Debug)]
pub struct Padding {
    /// Total rows after padding (every padded row is a decode row).
    pub rows: usize,
    /// The pool block that padded rows write to and read from (in no sequence's table).
    pub trash_block: u32,
}

/// Where each row of a paged-attention call reads and writes in the block pool, built on
/// the host and copied once per step into device buffers that are kept between steps
/// (shared by every layer; stable addresses let a CUDA graph reuse them).
///
/// A sequence with one new token is a decode row (flash-decoding kernel); the rows of a
/// sequence with several new tokens form prefill tiles (tiled causal kernel).
pub struct AttentionRows {
    /// Rows (tokens) in the batch, padding included.
    pub rows: usize,
    /// Host copy of the positions (checked against tables).
    pub host_positions: Vec<i32>,
    /// Key splits of the decode kernel (a power of two, at most [`MAX_SPLITS`]; 0 without
    /// decode rows).
    pub splits: usize,
    /// Keys per split (a power-of-two multiple of [`SPLIT_KEYS`]).
    pub split_len: usize,
    pub(crate) decode_count: usize,
    pub(crate) tile_count: usize,
    /// Host copy of the decode rows (one new token of a sequence), in order.
    pub(crate) host_decode_rows: Vec<i32>,
    pub(crate) positions: CudaSlice<i32>,
    pub(crate) table_off: CudaSlice<i32>,
    pub(crate) tables: CudaSlice<i32>,
    pub(crate) slots: CudaSlice<i32>,
    pub(crate) decode_rows: CudaSlice<i32>,
    pub(crate) tile_first: CudaSlice<i32>,
    pub(crate) tile_rows: CudaSlice<i32>,
}

/// Copies `src` into the front of `dst`, reallocating `dst` (at least twice the size)
/// when it is too short; says whether it reallocated.
pub(crate) fn refill(gpu: &Gpu, src: &[i32], dst: &mut CudaSlice<i32>) -> Result<bool, CudaError> {
    let grew = src.len() > dst.len();
    if grew {
        *dst = gpu.zeros::<i32>(src.len().next_power_of_two().max(2 * dst.len()))?;
    }
    if !src.is_empty() {
        gpu.stream()
            .memcpy_htod(src, &mut dst.slice_mut(..src.len()))?;
    }
    Ok(grew)
}

impl AttentionRows {
    /// For sequences given as (first position, new tokens, block table): one row per new
    /// token, in order.
    pub fn new(
        gpu: &Gpu,
        seqs: &[(usize, usize, &[u32])],
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self, CudaError> {
        let mut rows = Self::empty(gpu)?;
        rows.fill(gpu, seqs, block_size, num_blocks, None)?;
        Ok(rows)
    }

    /// Rows of no step yet, with minimal device buffers.
    pub fn empty(gpu: &Gpu) -> Result<Self, CudaError> {
        Ok(Self {
            rows: 0,
            host_positions: Vec::new(),
            splits: 0,
            split_len: SPLIT_KEYS,
            decode_count: 0,
            tile_count: 0,
            host_decode_rows: Vec::new(),
            positions: gpu.zeros(1)?,
            table_off: gpu.zeros(1)?,
            tables: gpu.zeros(1)?,
            slots: gpu.zeros(1)?,
            decode_rows: gpu.zeros(1)?,
            tile_first: gpu.zeros(1)?,
            tile_rows: gpu.zeros(1)?,
        })
    }

    /// Describes a new step (see [`AttentionRows::new`]), padded with decode rows of
    /// position 0 in `padding.trash_block` when given. Returns whether a device buffer
    /// moved (a captured graph that used the old ones must be dropped).
    pub fn fill(
        &mut self,
        gpu: &Gpu,
        seqs: &[(usize, usize, &[u32])],
        block_size: usize,
        num_blocks: usize,
        padding: Option<Padding>,
    ) -> Result<bool, CudaError> {
        let h = HostRows::build(seqs, block_size, num_blocks, padding)?;
        (self.splits, self.split_len) = h.splits();
        let mut moved = false;
        moved |= refill(gpu, &h.positions, &mut self.positions)?;
        moved |= refill(gpu, &h.table_off, &mut self.table_off)?;
        moved |= refill(gpu, &h.tables, &mut self.tables)?;
        moved |= refill(gpu, &h.slots, &mut self.slots)?;
        moved |= refill(gpu, &h.decode_rows, &mut self.decode_rows)?;
        moved |= refill(gpu, &h.tile_first, &mut self.tile_first)?;
        moved |= refill(gpu, &h.tile_rows, &mut self.tile_rows)?;
        self.rows = h.positions.len();
        self.decode_count = h.decode_rows.len();
        self.tile_count = h.tile_first.len();
        self.host_positions = h.positions;
        self.host_decode_rows = h.decode_rows;
        Ok(moved)
    }

    /// Device positions (for RoPE).
    pub fn positions(&self) -> &CudaSlice<i32> {
        &self.positions
    }
}

/// Per-split partial results of the decode kernel, kept between steps.
pub struct AttentionScratch {
    pub(crate) part_m: CudaSlice<f32>,
    pub(crate) part_l: CudaSlice<f32>,
    pub(crate) part_acc: CudaSlice<f32>,
}

impl AttentionScratch {
    /// Minimal buffers (they grow in [`AttentionScratch::reserve`]).
    pub fn new(gpu: &Gpu) -> Result<Self, CudaError> {
        Ok(Self {
            part_m: gpu.scratch(1)?,
            part_l: gpu.scratch(1)?,
            part_acc: gpu.scratch(1)?,
        })
    }

    /// Room for `parts` (row, head, split) partials of width `d`; says whether a buffer
    /// moved.
    pub fn reserve(&mut self, gpu: &Gpu, parts: usize, d: usize) -> Result<bool, CudaError> {
        if parts <= self.part_m.len() && parts * d <= self.part_acc.len() {
            return Ok(false);
        }
        let parts = parts.next_power_of_two();
        // The split kernel writes every partial before the reduce kernel reads it.
        self.part_m = gpu.scratch(parts)?;
        self.part_l = gpu.scratch(parts)?;
        self.part_acc = gpu.scratch(parts * d)?;
        Ok(true)
    }
}

/// Shape of one layer's paged attention over the device block pool on this rank.
#[derive(Clone, Copy, Debug)]
pub struct PoolShape<'a> {
    /// Width of every head.
    pub head_dim: usize,
    /// Key/value heads in the pool.
    pub kv_heads: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Sliding window (`None`: all keys).
    pub window: Option<usize>,
    /// For each query head, its kv head (device copy of the same list).
    pub kv_index: &'a CudaSlice<i32>,
    /// Query heads.
    pub q_heads: usize,
}

impl PoolShape<'_> {
    /// What every kernel of the f32 pool takes after its row lists: the query heads' kv
    /// heads, head width, kv heads, block size and window (0: none).
    fn kernel_args(&self, gpu: &Gpu) -> Result<[Arg; 5], CudaError> {
        Ok([
            Arg::Ptr(gpu.ptr(self.kv_index)),
            Arg::I32(self.head_dim as i32),
            Arg::I32(self.kv_heads as i32),
            Arg::I32(i32_of("paged_attention", self.block_size)?),
            Arg::I32(i32_of("paged_attention", self.window.unwrap_or(0))?),
        ])
    }
}

/// An element type of a key/value pool, with the kernel that writes it.
pub trait KvElem {
    /// The `cuda/` kernel that writes f32 keys and values into a pool of this type.
    const KERNEL: &'static str;
}

impl KvElem for f32 {
    const KERNEL: &'static str = "kv_write_f32";
}

/// bf16 bits: the pool stores each f32 key and value rounded to bfloat16.
impl KvElem for u16 {
    const KERNEL: &'static str = "kv_write_bf16";
}

/// Writes each row's key and value (f32 columns `k_col..`, `v_col..` of `qkv`, rows of
/// `stride`) into its cache slot, in the pool's element type (f32 or bf16 bits).
#[allow(clippy::too_many_arguments)]
pub fn kv_write<T: KvElem>(
    gpu: &Gpu,
    qkv: &CudaSlice<f32>,
    stride: usize,
    k_col: usize,
    v_col: usize,
    kvw: usize,
    rows: &AttentionRows,
    k_cache: &mut CudaSlice<T>,
    v_cache: &mut CudaSlice<T>,
) -> Result<(), CudaError> {
    let op = T::KERNEL;
    ensure(
        k_col + kvw <= stride && v_col + kvw <= stride && qkv.len() >= rows.rows * stride,
        op,
        || format!("kv width {kvw} at {k_col}/{v_col} in rows of {stride}"),
    )?;
    if kvw == 0 || rows.rows == 0 {
        return Ok(());
    }
    gpu.launch(
        op,
        (rows.rows as u32, 1, 1),
        128,
        &[
            Arg::Ptr(gpu.ptr(qkv)),
            Arg::I32(i32_of(op, stride)?),
            Arg::I32(i32_of(op, k_col)?),
            Arg::I32(i32_of(op, v_col)?),
            Arg::I32(i32_of(op, kvw)?),
            Arg::Ptr(gpu.ptr(&rows.slots)),
            Arg::Ptr(gpu.ptr(k_cache)),
            Arg::Ptr(gpu.ptr(v_cache)),
        ],
    )
}

/// Keys per split of the flash-decoding attention (the shortest split).
pub const SPLIT_KEYS: usize = 256;

/// Most splits per (row, head) of the flash-decoding attention.
pub const MAX_SPLITS: usize = 64;

/// Causal paged attention of every row's query heads (columns `q_col..` of rows of
/// `q_stride` in `q`) over the pool; writes `out[row][head * d..]`. Decode rows run the
/// split kernel (partials in `scratch`, which must hold `decode rows × heads × splits`,
/// see [`AttentionScratch::reserve`]); prefill tiles run the tiled kernel.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    gpu: &Gpu,
    q: &CudaSlice<f32>,
    q_stride: usize,
    q_col: usize,
    k_cache: &CudaSlice<f32>,
    v_cache: &CudaSlice<f32>,
    rows: &AttentionRows,
    shape: &PoolShape<'_>,
    scratch: &AttentionScratch,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (d, hq) = (shape.head_dim, shape.q_heads);
    ensure(d > 0 && d <= 256, "paged_attention", || {
        format!("head_dim {d} must be 1..=256")
    })?;
    ensure(
        shape.kv_index.len() >= hq
            && q_col + hq * d <= q_stride
            && q.len() >= rows.rows * q_stride
            && out.len() >= rows.rows * hq * d,
        "paged_attention",
        || format!("{hq} heads of {d}"),
    )?;
    if rows.rows == 0 || hq == 0 {
        return Ok(());
    }
    let common = [
        Arg::Ptr(gpu.ptr(q)),
        Arg::I32(i32_of("paged_attention", q_stride)?),
        Arg::I32(q_col as i32),
        Arg::Ptr(gpu.ptr(k_cache)),
        Arg::Ptr(gpu.ptr(v_cache)),
        Arg::Ptr(gpu.ptr(&rows.tables)),
        Arg::Ptr(gpu.ptr(&rows.table_off)),
        Arg::Ptr(gpu.ptr(&rows.positions)),
    ];
    if rows.tile_count > 0 {
        prefill_tiles_f32(gpu, &common, rows, shape, out)?;
    }
    if rows.decode_count > 0 {
        decode_splits_f32(gpu, &common, rows, shape, scratch, out)?;
    }
    Ok(())
}

/// 1 / sqrt(head width): the attention score scale.
pub(crate) fn score_scale(d: usize) -> f32 {
    1.0 / (d as f32).sqrt()
}

/// The tiled causal kernel over the step's prefill tiles (`common`: the query and pool
/// arguments every attention kernel of the f32 pool takes first).
fn prefill_tiles_f32(
    gpu: &Gpu,
    common: &[Arg],
    rows: &AttentionRows,
    shape: &PoolShape<'_>,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (d, hq) = (shape.head_dim, shape.q_heads);
    let mut args = common.to_vec();
    args.extend([
        Arg::Ptr(gpu.ptr(&rows.tile_first)),
        Arg::Ptr(gpu.ptr(&rows.tile_rows)),
    ]);
    args.extend(shape.kernel_args(gpu)?);
    args.extend([Arg::F32(score_scale(d)), Arg::Ptr(gpu.ptr(out))]);
    gpu.launch(
        "prefill_attention_f32",
        (rows.tile_count as u32, hq as u32, 1),
        128,
        &args,
    )
}

/// The flash-decoding split kernel over the step's decode rows, then the kernel that
/// combines each (row, head)'s split partials into `out`.
fn decode_splits_f32(
    gpu: &Gpu,
    common: &[Arg],
    rows: &AttentionRows,
    shape: &PoolShape<'_>,
    scratch: &AttentionScratch,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let (d, hq) = (shape.head_dim, shape.q_heads);
    let splits = rows.splits;
    let parts = rows.decode_count * hq * splits;
    ensure(
        scratch.part_m.len() >= parts && scratch.part_acc.len() >= parts * d,
        "paged_attention",
        || {
            format!(
                "scratch holds {} partials, {parts} needed",
                scratch.part_m.len()
            )
        },
    )?;
    let mut args = common.to_vec();
    args.push(Arg::Ptr(gpu.ptr(&rows.decode_rows)));
    args.extend(shape.kernel_args(gpu)?);
    args.extend([
        Arg::I32(i32_of("paged_attention", rows.split_len)?),
        Arg::F32(score_scale(d)),
        Arg::Ptr(gpu.ptr(&scratch.part_m)),
        Arg::Ptr(gpu.ptr(&scratch.part_l)),
        Arg::Ptr(gpu.ptr(&scratch.part_acc)),
    ]);
    gpu.launch(
        "paged_attention_split_f32",
        (rows.decode_count as u32, hq as u32, splits as u32),
        128,
        &args,
    )?;
    gpu.launch(
        "paged_attention_reduce_f32",
        (rows.decode_count as u32, hq as u32, 1),
        (d.div_ceil(32) * 32) as u32,
        &[
            Arg::Ptr(gpu.ptr(&scratch.part_m)),
            Arg::Ptr(gpu.ptr(&scratch.part_l)),
            Arg::Ptr(gpu.ptr(&scratch.part_acc)),
            Arg::Ptr(gpu.ptr(&rows.decode_rows)),
            Arg::I32(d as i32),
            Arg::I32(splits as i32),
            Arg::Ptr(gpu.ptr(out)),
        ],
    )
}
