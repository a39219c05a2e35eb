//! Safe wrappers of the kernels of `cuda/`: each checks its shapes, then launches.
//!
//! Activations are f32 on the device; weights are f32, bf16 or f16 ([`DeviceMatrix`]).
//! Each wrapper's CPU reference is named in the kernel file's header.

use cudarc::driver::CudaSlice;

use crate::device::{Arg, Gpu};
use crate::error::{ensure, CudaError};

/// Storage precision of device weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceDtype {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl DeviceDtype {
    /// Parses `f32`, `bf16` or `f16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            "f16" | "float16" => Some(Self::F16),
            _ => None,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 | Self::F16 => 2,
        }
    }

    /// Rounds `v` to this dtype and back (what the device holds for a host value).
    pub fn round(self, v: f32) -> f32 {
        match self {
            Self::F32 => v,
            Self::Bf16 => half::bf16::from_f32(v).to_f32(),
            Self::F16 => half::f16::from_f32(v).to_f32(),
        }
    }
}

/// A weight matrix `[rows, cols]` (row-major, Hugging Face layout) on the device.
pub struct DeviceMatrix {
    data: MatrixData,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

enum MatrixData {
    F32(CudaSlice<f32>),
    /// bf16 or f16 bits.
    Half(CudaSlice<u16>, DeviceDtype),
}

impl DeviceMatrix {
    /// Uploads `data` (`rows * cols` f32 values) stored as `dtype`.
    pub fn upload(
        gpu: &Gpu,
        data: &[f32],
        rows: usize,
        cols: usize,
        dtype: DeviceDtype,
    ) -> Result<Self, CudaError> {
        ensure(data.len() == rows * cols, "DeviceMatrix::upload", || {
            format!("{} values for [{rows}, {cols}]", data.len())
        })?;
        let data = match dtype {
            DeviceDtype::F32 => MatrixData::F32(gpu.upload(data)?),
            DeviceDtype::Bf16 => MatrixData::Half(
                gpu.upload(
                    &data
                        .iter()
                        .map(|&v| half::bf16::from_f32(v).to_bits())
                        .collect::<Vec<_>>(),
                )?,
                dtype,
            ),
            DeviceDtype::F16 => MatrixData::Half(
                gpu.upload(
                    &data
                        .iter()
                        .map(|&v| half::f16::from_f32(v).to_bits())
                        .collect::<Vec<_>>(),
                )?,
                dtype,
            ),
        };
        Ok(Self { data, rows, cols })
    }

    /// A matrix of seeded uniform values in `offset ± scale`, generated on the device
    /// (benchmarks of models too large to send).
    pub fn random(
        gpu: &Gpu,
        rows: usize,
        cols: usize,
        dtype: DeviceDtype,
        seed: u64,
        scale: f32,
        offset: f32,
    ) -> Result<Self, CudaError> {
        let n = rows * cols;
        let data = match dtype {
            DeviceDtype::F32 => {
                let buf = gpu.zeros::<f32>(n)?;
                fill_uniform(
                    gpu,
                    "fill_uniform_f32",
                    gpu.ptr(&buf),
                    n,
                    seed,
                    scale,
                    offset,
                )?;
                MatrixData::F32(buf)
            }
            DeviceDtype::Bf16 | DeviceDtype::F16 => {
                let buf = gpu.zeros::<u16>(n)?;
                let k = if dtype == DeviceDtype::Bf16 {
                    "fill_uniform_bf16"
                } else {
                    "fill_uniform_f16"
                };
                fill_uniform(gpu, k, gpu.ptr(&buf), n, seed, scale, offset)?;
                MatrixData::Half(buf, dtype)
            }
        };
        Ok(Self { data, rows, cols })
    }

    /// The storage dtype.
    pub fn dtype(&self) -> DeviceDtype {
        match &self.data {
            MatrixData::F32(_) => DeviceDtype::F32,
            MatrixData::Half(_, d) => *d,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.rows * self.cols * self.dtype().size()
    }

    fn ptr(&self, gpu: &Gpu) -> u64 {
        match &self.data {
            MatrixData::F32(b) => gpu.ptr(b),
            MatrixData::Half(b, _) => gpu.ptr(b),
        }
    }
}

fn fill_uniform(
    gpu: &Gpu,
    kernel: &str,
    ptr: u64,
    n: usize,
    seed: u64,
    scale: f32,
    offset: f32,
) -> Result<(), CudaError> {
    gpu.launch(
        kernel,
        (blocks(n, 256), 1, 1),
        256,
        &[
            Arg::Ptr(ptr),
            Arg::I64(n as i64),
            Arg::U64(seed),
            Arg::F32(scale),
            Arg::F32(offset),
        ],
    )
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

fn i32_of(op: &'static str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::Shape {
        op,
        reason: format!("{v} does not fit a 32-bit int"),
    })
}

/// Threads per block for a row of `dim` elements: a multiple of 32, at most 1024.
fn row_threads(dim: usize) -> u32 {
    (dim.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// `y[m, n] = x[m, k] · w^T` by cuBLASLt, f32 accumulation. Half-precision weights take
/// `x` cast to their dtype (in `x_half`, grown as needed); f32 weights use plain f32
/// compute (no TF32).
pub fn gemm(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    m: usize,
    w: &DeviceMatrix,
    y: &mut CudaSlice<f32>,
    x_half: &mut CudaSlice<u16>,
) -> Result<(), CudaError> {
    let (n, k) = (w.rows, w.cols);
    ensure(x.len() >= m * k, "gemm", || {
        format!("x has {} values, needs {m}x{k}", x.len())
    })?;
    ensure(y.len() >= m * n, "gemm", || {
        format!("y has {} values, needs {m}x{n}", y.len())
    })?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        gpu.stream().memset_zeros(y)?;
        return Ok(());
    }
    let (x_ptr, dtype) = match &w.data {
        MatrixData::F32(_) => (gpu.ptr(x), DeviceDtype::F32),
        MatrixData::Half(_, dtype) => {
            if x_half.len() < m * k {
                *x_half = gpu.zeros::<u16>(m * k)?;
            }
            let kernel = if *dtype == DeviceDtype::Bf16 {
                "cast_f32_bf16"
            } else {
                "cast_f32_f16"
            };
            gpu.launch(
                kernel,
                (blocks(m * k, 256), 1, 1),
                256,
                &[
                    Arg::Ptr(gpu.ptr(x)),
                    Arg::Ptr(gpu.ptr(x_half)),
                    Arg::I64((m * k) as i64),
                ],
            )?;
            (gpu.ptr(x_half), *dtype)
        }
    };
    gpu.gemm_lt(dtype, (m, n, k), w.ptr(gpu), x_ptr, gpu.ptr(y))
}

/// `out = rmsnorm(x) * weight` for `rows` rows of `weight.len()`.
pub fn rms_norm(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    weight: &CudaSlice<f32>,
    eps: f32,
    rows: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let dim = weight.len();
    ensure(
        x.len() >= rows * dim && out.len() >= rows * dim,
        "rms_norm",
        || format!("{rows} rows of {dim}: x {} out {}", x.len(), out.len()),
    )?;
    gpu.launch(
        "rms_norm_f32",
        (rows as u32, 1, 1),
        row_threads(dim),
        &[
            Arg::Ptr(gpu.ptr(x)),
            Arg::Ptr(gpu.ptr(weight)),
            Arg::Ptr(gpu.ptr(out)),
            Arg::I32(i32_of("rms_norm", dim)?),
            Arg::F32(eps),
        ],
    )
}

/// `residual += delta`, then `out = rmsnorm(residual) * weight`, per row.
pub fn add_rms_norm(
    gpu: &Gpu,
    residual: &mut CudaSlice<f32>,
    delta: &CudaSlice<f32>,
    weight: &CudaSlice<f32>,
    eps: f32,
    rows: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let dim = weight.len();
    let n = rows * dim;
    ensure(
        residual.len() >= n && delta.len() >= n && out.len() >= n,
        "add_rms_norm",
        || format!("{rows} rows of {dim}"),
    )?;
    gpu.launch(
        "add_rms_norm_f32",
        (rows as u32, 1, 1),
        row_threads(dim),
        &[
            Arg::Ptr(gpu.ptr(residual)),
            Arg::Ptr(gpu.ptr(delta)),
            Arg::Ptr(gpu.ptr(weight)),
            Arg::Ptr(gpu.ptr(out)),
            Arg::I32(i32_of("add_rms_norm", dim)?),
            Arg::F32(eps),
        ],
    )
}

/// `x[..n] += delta[..n]`.
pub fn add(
    gpu: &Gpu,
    x: &mut CudaSlice<f32>,
    delta: &CudaSlice<f32>,
    n: usize,
) -> Result<(), CudaError> {
    ensure(x.len() >= n && delta.len() >= n, "add", || {
        format!("{n} values")
    })?;
    gpu.launch(
        "add_f32",
        (blocks(n, 256), 1, 1),
        256,
        &[
            Arg::Ptr(gpu.ptr(x)),
            Arg::Ptr(gpu.ptr(delta)),
            Arg::I64(n as i64),
        ],
    )
}

/// Rotary tables on the device: cos/sin of `position * inv_freq[i]`, computed on the host
/// exactly as `tessera_kernels::RopeTable` does (Llama 3 scaling lives in `inv_freq`).
pub struct DeviceRope {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    head_dim: usize,
    max_positions: usize,
}

impl DeviceRope {
    /// Tables for `head_dim` (even) and positions `0..max_positions`.
    pub fn new(
        gpu: &Gpu,
        head_dim: usize,
        max_positions: usize,
        inv_freq: &[f32],
    ) -> Result<Self, CudaError> {
        ensure(
            head_dim > 0 && head_dim.is_multiple_of(2) && inv_freq.len() == head_dim / 2,
            "rope",
            || format!("head_dim {head_dim} with {} frequencies", inv_freq.len()),
        )?;
        let mut cos = Vec::with_capacity(max_positions * inv_freq.len());
        let mut sin = Vec::with_capacity(cos.capacity());
        for pos in 0..max_positions {
            for &f in inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(Self {
            cos: gpu.upload(&cos)?,
            sin: gpu.upload(&sin)?,
            head_dim,
            max_positions,
        })
    }

    /// Positions covered.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }
}

/// Rotary embedding in place on `heads` heads from column `col` of rows of width
/// `stride`, row r at `positions[r]` (checked below the table's end by the caller's
/// host copy, `host_positions`).
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    x: &mut CudaSlice<f32>,
    stride: usize,
    col: usize,
    heads: usize,
    positions: &CudaSlice<i32>,
    host_positions: &[i32],
    table: &DeviceRope,
) -> Result<(), CudaError> {
    let rows = host_positions.len();
    let d = table.head_dim;
    ensure(
        col + heads * d <= stride && x.len() >= rows * stride && positions.len() >= rows,
        "rope",
        || format!("{heads} heads of {d} at column {col} in rows of {stride}"),
    )?;
    ensure(
        host_positions
            .iter()
            .all(|&p| p >= 0 && (p as usize) < table.max_positions),
        "rope",
        || format!("a position is outside 0..{}", table.max_positions),
    )?;
    if heads == 0 || rows == 0 {
        return Ok(());
    }
    gpu.launch(
        "rope_f32",
        (rows as u32, heads as u32, 1),
        (d / 2).clamp(32, 1024) as u32,
        &[
            Arg::Ptr(gpu.ptr(x)),
            Arg::I32(i32_of("rope", stride)?),
            Arg::I32(i32_of("rope", col)?),
            Arg::I32(d as i32),
            Arg::Ptr(gpu.ptr(positions)),
            Arg::Ptr(gpu.ptr(&table.cos)),
            Arg::Ptr(gpu.ptr(&table.sin)),
        ],
    )
}

/// `out[r, i] = silu(gate_up[r, i]) * gate_up[r, inter + i]` for `rows` rows.
pub fn silu_mul(
    gpu: &Gpu,
    gate_up: &CudaSlice<f32>,
    inter: usize,
    rows: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let n = rows * inter;
    ensure(gate_up.len() >= 2 * n && out.len() >= n, "silu_mul", || {
        format!("{rows} rows of {inter}")
    })?;
    if n == 0 {
        return Ok(());
    }
    gpu.launch(
        "silu_mul_f32",
        (blocks(n, 256), 1, 1),
        256,
        &[
            Arg::Ptr(gpu.ptr(gate_up)),
            Arg::Ptr(gpu.ptr(out)),
            Arg::I32(i32_of("silu_mul", inter)?),
            Arg::I64(n as i64),
        ],
    )
}

/// `y[r, j] += bias[j]` for `rows` rows of `bias.len()`.
pub fn add_bias(
    gpu: &Gpu,
    y: &mut CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    rows: usize,
) -> Result<(), CudaError> {
    let n = bias.len();
    ensure(y.len() >= rows * n, "add_bias", || {
        format!("{rows} rows of {n}")
    })?;
    gpu.launch(
        "add_bias_f32",
        (blocks(rows * n, 256), 1, 1),
        256,
        &[
            Arg::Ptr(gpu.ptr(y)),
            Arg::Ptr(gpu.ptr(bias)),
            Arg::I32(i32_of("add_bias", n)?),
            Arg::I64((rows * n) as i64),
        ],
    )
}

/// Embedding rows for `ids` from a table holding vocabulary rows
/// `vocab_start..vocab_start + table.rows`; other ids give zero rows.
pub fn embedding(
    gpu: &Gpu,
    ids: &CudaSlice<i32>,
    rows: usize,
    table: &DeviceMatrix,
    vocab_start: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    let h = table.cols;
    ensure(
        ids.len() >= rows && out.len() >= rows * h,
        "embedding",
        || format!("{rows} rows of {h}"),
    )?;
    let kernel = match table.dtype() {
        DeviceDtype::F32 => "embedding_f32",
        DeviceDtype::Bf16 => "embedding_bf16",
        DeviceDtype::F16 => "embedding_f16",
    };
    gpu.launch(
        kernel,
        (rows as u32, 1, 1),
        row_threads(h).min(256),
        &[
            Arg::Ptr(gpu.ptr(ids)),
            Arg::Ptr(table.ptr(gpu)),
            Arg::Ptr(gpu.ptr(out)),
            Arg::I32(i32_of("embedding", h)?),
            Arg::I32(i32_of("embedding", vocab_start)?),
            Arg::I32(i32_of("embedding", table.rows)?),
        ],
    )
}

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
    decode_count: usize,
    tile_count: usize,
    positions: CudaSlice<i32>,
    table_off: CudaSlice<i32>,
    tables: CudaSlice<i32>,
    slots: CudaSlice<i32>,
    decode_rows: CudaSlice<i32>,
    tile_first: CudaSlice<i32>,
    tile_rows: CudaSlice<i32>,
}

/// The host side of one step's [`AttentionRows`].
#[derive(Default)]
struct HostRows {
    positions: Vec<i32>,
    table_off: Vec<i32>,
    tables: Vec<i32>,
    slots: Vec<i32>,
    decode_rows: Vec<i32>,
    tile_first: Vec<i32>,
    tile_rows: Vec<i32>,
}

/// Copies `src` into the front of `dst`, reallocating `dst` (at least twice the size)
/// when it is too short; says whether it reallocated.
fn refill(gpu: &Gpu, src: &[i32], dst: &mut CudaSlice<i32>) -> Result<bool, CudaError> {
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
        let mut h = HostRows::default();
        for &(start, tokens, table) in seqs {
            ensure(
                table.len() * block_size >= start + tokens,
                "paged_attention",
                || {
                    format!(
                        "a table of {} blocks cannot hold {} positions",
                        table.len(),
                        start + tokens
                    )
                },
            )?;
            ensure(
                table.iter().all(|&b| (b as usize) < num_blocks),
                "paged_attention",
                || format!("a block id is not below {num_blocks}"),
            )?;
            let off = i32_of("paged_attention", h.tables.len())?;
            h.tables.extend(table.iter().map(|&b| b as i32));
            let first_row = h.positions.len();
            for p in start..start + tokens {
                h.positions.push(i32_of("paged_attention", p)?);
                h.table_off.push(off);
                h.slots.push(i32_of(
                    "paged_attention",
                    table[p / block_size] as usize * block_size + p % block_size,
                )?);
            }
            if tokens == 1 {
                h.decode_rows.push(i32_of("paged_attention", first_row)?);
            } else {
                for t0 in (0..tokens).step_by(PREFILL_TILE_ROWS) {
                    h.tile_first
                        .push(i32_of("paged_attention", first_row + t0)?);
                    h.tile_rows.push(PREFILL_TILE_ROWS.min(tokens - t0) as i32);
                }
            }
        }
        if let Some(pad) = padding {
            ensure(pad.rows >= h.positions.len(), "paged_attention", || {
                format!(
                    "{} rows do not fit a padding of {}",
                    h.positions.len(),
                    pad.rows
                )
            })?;
            let off = i32_of("paged_attention", h.tables.len())?;
            h.tables.push(pad.trash_block as i32);
            let slot = i32_of("paged_attention", pad.trash_block as usize * block_size)?;
            while h.positions.len() < pad.rows {
                h.decode_rows.push(h.positions.len() as i32);
                h.positions.push(0);
                h.table_off.push(off);
                h.slots.push(slot);
            }
        }
        let longest_decode = h
            .decode_rows
            .iter()
            .map(|&r| h.positions[r as usize] as usize + 1)
            .max()
            .unwrap_or(0);
        // Splits of 256 keys, rounded up to a power of two; past MAX_SPLITS the splits
        // grow longer instead (so the partials stay bounded for long contexts).
        let wanted = longest_decode
            .div_ceil(SPLIT_KEYS)
            .max(1)
            .next_power_of_two();
        (self.splits, self.split_len) = if h.decode_rows.is_empty() {
            (0, SPLIT_KEYS)
        } else if wanted <= MAX_SPLITS {
            (wanted, SPLIT_KEYS)
        } else {
            (MAX_SPLITS, SPLIT_KEYS * (wanted / MAX_SPLITS))
        };
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
        Ok(moved)
    }

    /// Device positions (for RoPE).
    pub fn positions(&self) -> &CudaSlice<i32> {
        &self.positions
    }
}

/// Per-split partial results of the decode kernel, kept between steps.
pub struct AttentionScratch {
    part_m: CudaSlice<f32>,
    part_l: CudaSlice<f32>,
    part_acc: CudaSlice<f32>,
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

/// Shape of one layer's attention on this rank.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape<'a> {
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

/// Writes each row's key and value (columns `k_col..`, `v_col..` of `qkv`, rows of
/// `stride`) into its cache slot.
#[allow(clippy::too_many_arguments)]
pub fn kv_write(
    gpu: &Gpu,
    qkv: &CudaSlice<f32>,
    stride: usize,
    k_col: usize,
    v_col: usize,
    kvw: usize,
    rows: &AttentionRows,
    k_cache: &mut CudaSlice<f32>,
    v_cache: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    ensure(
        k_col + kvw <= stride && v_col + kvw <= stride && qkv.len() >= rows.rows * stride,
        "kv_write",
        || format!("kv width {kvw} at {k_col}/{v_col} in rows of {stride}"),
    )?;
    if kvw == 0 || rows.rows == 0 {
        return Ok(());
    }
    gpu.launch(
        "kv_write_f32",
        (rows.rows as u32, 1, 1),
        128,
        &[
            Arg::Ptr(gpu.ptr(qkv)),
            Arg::I32(i32_of("kv_write", stride)?),
            Arg::I32(k_col as i32),
            Arg::I32(v_col as i32),
            Arg::I32(kvw as i32),
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
    shape: &AttentionShape<'_>,
    scratch: &mut AttentionScratch,
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
    let scale = 1.0 / (d as f32).sqrt();
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
        let mut args = common.to_vec();
        args.extend([
            Arg::Ptr(gpu.ptr(&rows.tile_first)),
            Arg::Ptr(gpu.ptr(&rows.tile_rows)),
            Arg::Ptr(gpu.ptr(shape.kv_index)),
            Arg::I32(d as i32),
            Arg::I32(shape.kv_heads as i32),
            Arg::I32(i32_of("paged_attention", shape.block_size)?),
            Arg::I32(i32_of("paged_attention", shape.window.unwrap_or(0))?),
            Arg::F32(scale),
            Arg::Ptr(gpu.ptr(out)),
        ]);
        gpu.launch(
            "prefill_attention_f32",
            (rows.tile_count as u32, hq as u32, 1),
            128,
            &args,
        )?;
    }
    if rows.decode_count == 0 {
        return Ok(());
    }
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
    args.extend([
        Arg::Ptr(gpu.ptr(&rows.decode_rows)),
        Arg::Ptr(gpu.ptr(shape.kv_index)),
        Arg::I32(d as i32),
        Arg::I32(shape.kv_heads as i32),
        Arg::I32(i32_of("paged_attention", shape.block_size)?),
        Arg::I32(i32_of("paged_attention", shape.window.unwrap_or(0))?),
        Arg::I32(i32_of("paged_attention", rows.split_len)?),
        Arg::F32(scale),
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

/// Rearranges gathered logits (rank r's `rows` rows of `lens[r]` values back to back at
/// `r * block`) into full rows of `vocab` in `out`, rank r's at column `starts[r]`.
#[allow(clippy::too_many_arguments)]
pub fn unpad_logits(
    gpu: &Gpu,
    gathered: &CudaSlice<f32>,
    starts: &CudaSlice<i32>,
    lens: &CudaSlice<i32>,
    ranks: usize,
    block: usize,
    rows: usize,
    vocab: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    ensure(
        starts.len() >= ranks
            && lens.len() >= ranks
            && gathered.len() >= ranks * block
            && out.len() >= rows * vocab,
        "unpad_logits",
        || format!("{rows} rows of {vocab} from {ranks} blocks of {block}"),
    )?;
    if rows == 0 || ranks == 0 {
        return Ok(());
    }
    gpu.launch(
        "unpad_logits_f32",
        (rows as u32, ranks as u32, 1),
        256,
        &[
            Arg::Ptr(gpu.ptr(gathered)),
            Arg::Ptr(gpu.ptr(starts)),
            Arg::Ptr(gpu.ptr(lens)),
            Arg::I64(block as i64),
            Arg::I32(i32_of("unpad_logits", vocab)?),
            Arg::Ptr(gpu.ptr(out)),
        ],
    )
}

/// `out[i] = x[rows[i]]` for `n` rows of `width` (device row indices).
pub fn gather_rows(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    width: usize,
    rows: &CudaSlice<i32>,
    n: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), CudaError> {
    ensure(
        rows.len() >= n && out.len() >= n * width,
        "gather_rows",
        || format!("{n} rows of {width}"),
    )?;
    if n == 0 || width == 0 {
        return Ok(());
    }
    gpu.launch(
        "gather_rows_f32",
        (n as u32, 1, 1),
        row_threads(width).min(256),
        &[
            Arg::Ptr(gpu.ptr(x)),
            Arg::Ptr(gpu.ptr(rows)),
            Arg::I32(i32_of("gather_rows", width)?),
            Arg::Ptr(gpu.ptr(out)),
        ],
    )
}

/// Greedy token of each of `rows` rows of `vocab` logits (`-1`: a row without a number).
pub fn argmax(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
) -> Result<Vec<i32>, CudaError> {
    ensure(logits.len() >= rows * vocab && vocab > 0, "argmax", || {
        format!("{rows} rows of {vocab}")
    })?;
    let out = gpu.zeros::<i32>(rows)?;
    gpu.launch(
        "argmax_f32",
        (rows as u32, 1, 1),
        1024,
        &[
            Arg::Ptr(gpu.ptr(logits)),
            Arg::I32(i32_of("argmax", vocab)?),
            Arg::Ptr(gpu.ptr(&out)),
        ],
    )?;
    gpu.download_prefix(&out, rows)
}

/// Sampling parameters of [`sample`].
#[derive(Clone, Copy, Debug)]
pub struct SampleParams {
    /// Softmax temperature (> 0).
    pub temperature: f32,
    /// Keep the k largest logits (0 = all).
    pub top_k: usize,
    /// Keep the smallest most-probable set of this mass (1 = all).
    pub top_p: f32,
}

/// One token per row drawn with `uniforms[row]` in [0, 1) (see `cuda/sampling.cu`).
pub fn sample(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    params: SampleParams,
    uniforms: &[f32],
) -> Result<Vec<i32>, CudaError> {
    ensure(
        logits.len() >= rows * vocab && vocab > 0 && uniforms.len() == rows,
        "sample",
        || format!("{rows} rows of {vocab}, {} uniforms", uniforms.len()),
    )?;
    ensure(
        params.temperature > 0.0 && params.top_p > 0.0 && params.top_p <= 1.0,
        "sample",
        || format!("{params:?}"),
    )?;
    let u = gpu.upload(uniforms)?;
    let out = gpu.zeros::<i32>(rows)?;
    gpu.launch(
        "sample_f32",
        (rows as u32, 1, 1),
        1024,
        &[
            Arg::Ptr(gpu.ptr(logits)),
            Arg::I32(i32_of("sample", vocab)?),
            Arg::F32(params.temperature),
            Arg::I32(i32_of("sample", params.top_k)?),
            Arg::F32(params.top_p),
            Arg::Ptr(gpu.ptr(&u)),
            Arg::Ptr(gpu.ptr(&out)),
        ],
    )?;
    gpu.download_prefix(&out, rows)
}

/// `len` seeded uniform f32 values in `offset ± scale`, generated on the device.
pub fn random_f32(
    gpu: &Gpu,
    len: usize,
    seed: u64,
    scale: f32,
    offset: f32,
) -> Result<CudaSlice<f32>, CudaError> {
    let buf = gpu.zeros::<f32>(len)?;
    fill_uniform(
        gpu,
        "fill_uniform_f32",
        gpu.ptr(&buf),
        len,
        seed,
        scale,
        offset,
    )?;
    Ok(buf)
}
