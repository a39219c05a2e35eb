//! The ops a Llama block needs, behind one trait, and their CPU implementation.
//!
//! The forward pass ([`crate::RankModel`]) is written against [`Backend`] only. Buffers are
//! host slices today; the CUDA backend generalizes them to device buffers.

use tessera_kernels::{ChunkOutput, CpuPool, PagedSeq, PagedShape, RopeTable, WeightRef};

use crate::error::ModelError;

/// Weight storage precision on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    /// 32-bit floats (the CPU default, exact to the reference).
    F32,
    /// bfloat16 (half the memory traffic; widened exactly to f32 in the kernels).
    Bf16,
}

impl WeightDtype {
    /// Parses `f32` or `bf16`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" | "float32" => Some(Self::F32),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            _ => None,
        }
    }

    /// Bytes per stored element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
        }
    }
}

/// A weight matrix `[rows, cols]` (row-major, Hugging Face layout) in its storage dtype.
#[derive(Debug)]
pub struct Matrix {
    data: MatrixData,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
}

#[derive(Debug)]
enum MatrixData {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
}

impl Matrix {
    /// Stores `data` (`rows * cols` f32 values) as `dtype`.
    pub fn new(data: Vec<f32>, rows: usize, cols: usize, dtype: WeightDtype) -> Self {
        let data = match dtype {
            WeightDtype::F32 => MatrixData::F32(data),
            WeightDtype::Bf16 => {
                MatrixData::Bf16(data.iter().map(|&v| half::bf16::from_f32(v)).collect())
            }
        };
        Self { data, rows, cols }
    }

    /// Stacks matrices of equal width on top of each other (fused q/k/v, gate/up).
    pub fn stack(parts: Vec<Vec<f32>>, cols: usize, dtype: WeightDtype) -> Self {
        let rows = parts.iter().map(|p| p.len() / cols.max(1)).sum();
        let data: Vec<f32> = parts.into_iter().flatten().collect();
        Self::new(data, rows, cols, dtype)
    }

    /// The kernels' view of the matrix.
    pub fn as_ref(&self) -> WeightRef<'_> {
        match &self.data {
            MatrixData::F32(v) => WeightRef::F32(v),
            MatrixData::Bf16(v) => WeightRef::Bf16(v),
        }
    }

    /// Row `r` widened to f32 into `out` (embedding lookups).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            MatrixData::F32(v) => out.copy_from_slice(&v[range]),
            MatrixData::Bf16(v) => {
                for (o, x) in out.iter_mut().zip(&v[range]) {
                    *o = x.to_f32();
                }
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            MatrixData::F32(v) => v.len() * 4,
            MatrixData::Bf16(v) => v.len() * 2,
        }
    }
}

/// The ops of a Llama block on one device.
pub trait Backend: Send + Sync {
    /// `y[m, n] = x[m, k] · w^T (+ bias)`, with the fixed reduction order over k.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        x: &[f32],
        m: usize,
        w: &Matrix,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), ModelError>;
    /// `y = x · w^T` with the reduction over the columns of `w` cut into fixed chunks of
    /// `chunk` columns: the chunk sums folded in order, or each chunk's sums for another
    /// rank to continue the fold (see [`tessera_kernels::matmul_chunked`]).
    fn matmul_chunked(
        &self,
        x: &[f32],
        m: usize,
        w: &Matrix,
        chunk: usize,
        output: ChunkOutput,
        y: &mut [f32],
    ) -> Result<(), ModelError>;
    /// `out = rmsnorm(x) * weight` per row.
    fn rms_norm(
        &self,
        x: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), ModelError>;
    /// `residual += delta`, then `out = rmsnorm(residual) * weight` per row.
    fn add_rms_norm(
        &self,
        residual: &mut [f32],
        delta: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), ModelError>;
    /// Rotary embedding in place for rows of `heads * head_dim` at `positions`.
    fn rope(
        &self,
        x: &mut [f32],
        heads: usize,
        positions: &[usize],
        table: &RopeTable,
    ) -> Result<(), ModelError>;
    /// Causal attention of each sequence's new queries over its paged cache (see [`PagedShape`]).
    fn paged_attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        seqs: &[PagedSeq<'_>],
        shape: &PagedShape<'_>,
        out: &mut [f32],
    ) -> Result<(), ModelError>;
    /// `gate = silu(gate) * up`.
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) -> Result<(), ModelError>;
}

/// The CPU backend: Tessera's own kernels on one rank's thread pool.
pub struct CpuBackend {
    pool: CpuPool,
}

impl CpuBackend {
    /// A backend running on `threads` threads (the caller's thread included).
    pub fn new(threads: usize) -> Result<Self, ModelError> {
        Ok(Self {
            pool: CpuPool::new(threads.max(1))?,
        })
    }

    /// The backend's thread pool.
    pub fn pool(&self) -> &CpuPool {
        &self.pool
    }
}

impl Backend for CpuBackend {
    fn matmul(
        &self,
        x: &[f32],
        m: usize,
        w: &Matrix,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), ModelError> {
        if w.cols == 0 {
            // A rank holding no columns (more ranks than heads) contributes zeros.
            for (i, v) in y.iter_mut().enumerate() {
                *v = bias.map_or(0.0, |b| b[i % w.rows.max(1)]);
            }
            return Ok(());
        }
        if w.rows == 0 || m == 0 {
            return Ok(());
        }
        tessera_kernels::matmul(&self.pool, x, m, w.cols, w.as_ref(), w.rows, bias, y)?;
        Ok(())
    }

    fn matmul_chunked(
        &self,
        x: &[f32],
        m: usize,
        w: &Matrix,
        chunk: usize,
        output: ChunkOutput,
        y: &mut [f32],
    ) -> Result<(), ModelError> {
        if w.rows == 0 || m == 0 {
            return Ok(());
        }
        tessera_kernels::matmul_chunked(
            &self.pool,
            x,
            m,
            w.cols,
            w.as_ref(),
            w.rows,
            None,
            chunk,
            output,
            y,
        )?;
        Ok(())
    }

    fn rms_norm(
        &self,
        x: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        tessera_kernels::rms_norm(x, weight, eps, out)?;
        Ok(())
    }

    fn add_rms_norm(
        &self,
        residual: &mut [f32],
        delta: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        tessera_kernels::add_rms_norm(residual, delta, weight, eps, out)?;
        Ok(())
    }

    fn rope(
        &self,
        x: &mut [f32],
        heads: usize,
        positions: &[usize],
        table: &RopeTable,
    ) -> Result<(), ModelError> {
        if heads == 0 {
            return Ok(());
        }
        tessera_kernels::rope(x, heads, table.head_dim(), positions, table)?;
        Ok(())
    }

    fn paged_attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        seqs: &[PagedSeq<'_>],
        shape: &PagedShape<'_>,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        if shape.kv_index.is_empty() {
            return Ok(());
        }
        tessera_kernels::paged_attention(&self.pool, q, k, v, seqs, shape, out)?;
        Ok(())
    }

    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) -> Result<(), ModelError> {
        tessera_kernels::silu_mul(gate, up)?;
        Ok(())
    }
}
