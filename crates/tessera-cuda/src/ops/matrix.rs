//! Device weight matrices ([`DeviceMatrix`] in f32, bf16 or f16), their GEMM through
//! cuBLASLt, and seeded random fills made on the device.

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

    /// The device address of its first element.
    pub(super) fn ptr(&self, gpu: &Gpu) -> u64 {
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
