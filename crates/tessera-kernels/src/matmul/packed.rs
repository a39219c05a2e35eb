//! Weights packed once (at load) into the kernels' panel layout, and the matmuls over them.

use half::bf16;

use super::drive::{Panels, PANEL};
use super::pairs;
use super::{check_operands, run_chunked, ChunkOutput, Elem, WeightRef};
use crate::aligned::{line_vec, LineVec};
use crate::error::{check_len, mul, KernelError};
use crate::pool::CpuPool;
use crate::quant::{self, BlockFormat, BlockTensor};

/// A weight matrix [rows = n outputs, cols = k inputs] in panels of 16 rows, k-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    data: PackedData,
}

/// The stored element type of a [`PackedMatrix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedWeight {
    /// 32-bit floats.
    F32,
    /// bfloat16, multiplied by activations rounded to bf16, a pair of k at a time
    /// (see [`super::pairs`]).
    Bf16,
    /// GGML blocks, decoded at run time.
    Blocks(BlockFormat),
}

/// Panel storage, one variant per element type, starting on a cache line.
#[derive(Debug, Clone, PartialEq)]
enum PackedData {
    F32(LineVec<f32>),
    /// Pair panels of bf16 bits.
    Bf16(LineVec<u16>),
    Blocks(BlockFormat, LineVec<u8>),
}

impl PackedMatrix {
    /// Packs row-major f32 weights [rows, cols].
    pub fn pack_f32(w: &[f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        let data = PackedData::F32(pack_elems(w, rows, cols)?);
        Ok(PackedMatrix { rows, cols, data })
    }

    /// Packs row-major bf16 weights [rows, cols] (kept as bf16, subnormals flushed) for
    /// matmuls in the bf16 pair order of [`super::pairs`] (x is rounded to bf16).
    pub fn pack_bf16(w: &[bf16], rows: usize, cols: usize) -> Result<Self, KernelError> {
        let data = PackedData::Bf16(pairs::pack_pairs(w, rows, cols)?);
        Ok(PackedMatrix { rows, cols, data })
    }

    /// Packs row-major weights of either float type.
    pub fn pack(w: WeightRef<'_>, rows: usize, cols: usize) -> Result<Self, KernelError> {
        match w {
            WeightRef::F32(w) => Self::pack_f32(w, rows, cols),
            WeightRef::Bf16(w) => Self::pack_bf16(w, rows, cols),
        }
    }

    /// Packs quantized weights, keeping them in their blocks.
    pub fn pack_blocks(t: &BlockTensor) -> Self {
        PackedMatrix {
            rows: t.rows(),
            cols: t.cols(),
            data: PackedData::Blocks(t.format(), quant::pack_panels(t)),
        }
    }

    /// Number of rows (outputs, n).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs, k).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored element type.
    pub fn weight(&self) -> PackedWeight {
        match &self.data {
            PackedData::F32(_) => PackedWeight::F32,
            PackedData::Bf16(_) => PackedWeight::Bf16,
            PackedData::Blocks(f, _) => PackedWeight::Blocks(*f),
        }
    }

    /// Bytes of packed storage (what a GEMV streams).
    pub fn storage_bytes(&self) -> usize {
        match &self.data {
            PackedData::F32(d) => d.len() * 4,
            PackedData::Bf16(d) => d.len() * 2,
            PackedData::Blocks(_, d) => d.len(),
        }
    }

    /// Row `r` (one output's weights, as packed) widened to f32 into `out` (`cols` floats): embedding
    /// lookups on a tied table kept only as panels. Block panels are not read back.
    pub fn row_into(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        check_len("out", self.cols, out.len())?;
        if r >= self.rows {
            return Err(KernelError::Invalid {
                what: "row",
                reason: format!("row {r} of a matrix of {} rows", self.rows),
            });
        }
        match &self.data {
            PackedData::F32(d) => {
                let at = r / PANEL * PANEL * self.cols + r % PANEL;
                for (kk, o) in out.iter_mut().enumerate() {
                    *o = d[at + kk * PANEL];
                }
            }
            PackedData::Bf16(d) => {
                let at = r / PANEL * PANEL * pairs::pairs_len(self.cols);
                for (kk, o) in out.iter_mut().enumerate() {
                    *o = pairs::widen(d[at + pairs::pair_index(r % PANEL, kk)]);
                }
            }
            PackedData::Blocks(f, _) => {
                return Err(KernelError::Invalid {
                    what: "row",
                    reason: format!("rows of {f:?} panels are not read back; keep the blocks"),
                })
            }
        }
        Ok(())
    }

    /// The panels as the kernels read them.
    fn panels(&self) -> Panels<'_> {
        match &self.data {
            PackedData::F32(d) => Panels::F32(d),
            PackedData::Bf16(d) => Panels::Bf16(d),
            PackedData::Blocks(f, d) => Panels::Blocks(*f, d),
        }
    }
}

/// Packs row-major `[rows, cols]` elements into zero-padded panels of 16 rows, k-major.
fn pack_elems<E: Elem>(w: &[E], rows: usize, cols: usize) -> Result<LineVec<E>, KernelError> {
    check_len("w", mul("w", rows, cols)?, w.len())?;
    let panels = rows.div_ceil(PANEL);
    let mut out = line_vec(E::default(), mul("w", panels * PANEL, cols)?);
    for (row, src) in w.chunks_exact(cols.max(1)).take(rows).enumerate() {
        let panel = &mut out[row / PANEL * PANEL * cols..][..PANEL * cols];
        for (kk, &v) in src.iter().enumerate() {
            panel[kk * PANEL + row % PANEL] = v;
        }
    }
    Ok(out)
}

/// `y[m*n] = x[m*k] · wᵀ (+ bias[n])` over packed weights (n = `w.rows()`, k = `w.cols()`), the same bits as [`super::matmul`].
pub fn matmul_packed(
    pool: &CpuPool,
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), KernelError> {
    matmul_packed_chunked(pool, x, m, w, bias, usize::MAX, ChunkOutput::Fold, y)
}

/// [`super::matmul_chunked`] over packed weights: the same chunks, fold and bits.
#[expect(
    clippy::too_many_arguments,
    reason = "BLAS-style operand list; each shape sits next to the buffer it describes"
)]
pub fn matmul_packed_chunked(
    pool: &CpuPool,
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    chunk: usize,
    output: ChunkOutput,
    y: &mut [f32],
) -> Result<(), KernelError> {
    let (k, n) = (w.cols, w.rows);
    if let PackedData::Bf16(_) = w.data {
        pairs::check_pair_chunk(k, chunk)?;
    }
    let chunks = check_operands(x, m, k, n, bias, chunk, output, y.len())?;
    run_chunked(pool, x, m, k, w.panels(), n, bias, chunk, output, y, chunks);
    Ok(())
}
