//! Safe wrappers of the kernels of `cuda/`: each checks its shapes, then launches.
//!
//! Activations are f32 on the device; weights are f32, bf16 or f16 ([`DeviceMatrix`]).
//! Each wrapper's CPU reference is named in the kernel file's header.

use cudarc::driver::CudaSlice;

use crate::device::{Arg, Gpu};

mod attention;
mod decode;
mod host_rows;
mod matrix;
mod sampling;

use crate::error::{ensure, CudaError};
pub use attention::*;
pub use decode::*;
pub use matrix::*;
pub use sampling::*;

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
