//! Safe wrappers of the kernels of `cuda/`: each checks its shapes, then launches.
//!
//! Activations are f32 on the device; weights are f32, bf16 or f16 ([`DeviceMatrix`]).
//! Each wrapper's CPU reference is named in the kernel file's header.

use cudarc::driver::CudaSlice;

use crate::device::{Arg, Gpu};

mod attention;
mod decode;
mod sampling;

use crate::error::{ensure, CudaError};
pub use attention::*;
pub use decode::*;
pub use sampling::*;

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

pub(crate) fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

pub(crate) fn i32_of(op: &'static str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::Shape {
        op,
        reason: format!("{v} does not fit a 32-bit int"),
    })
}

/// Threads per block for a row of `dim` elements: a multiple of 32, at most 1024.
pub(crate) fn row_threads(dim: usize) -> u32 {
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
