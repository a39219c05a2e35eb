//! Quantized weights in GGML's block formats (32 values along k per block), as stored in
//! a GGUF file, and the quantizers that make them (ggml's reference rounding).
//!
//! ```text
//! Q8_0  | d: f16 | q[0..32]: i8          value j    = q[j] * d
//! Q4_0  | d: f16 | qs[0..16]             value j    = ((qs[j] & 0xF) - 8) * d
//!                                        value j+16 = ((qs[j] >> 4) - 8) * d
//! Q4_1  | d: f16 | m: f16 | qs[0..16]    value j    = (qs[j] & 0xF) * d + m
//!                                        value j+16 = (qs[j] >> 4) * d + m
//! ```
//!
//! `q * d` is exact in f32 (at most 8 + 11 significant bits), so [`BlockTensor::dequantize`]
//! equals a plain f32 dequantization (tessera-convert's `dequant.rs`) bit for bit. The
//! matmul kernels never dequantize: they multiply the integer codes with activations
//! rounded to i16 per block ([`act`]), as llama.cpp multiplies them with 8-bit ones.

pub(crate) mod act;
mod panel;
mod quantize;

use std::ops::Range;

use half::f16;

use crate::error::{check_len, mul, KernelError};

pub(crate) use panel::{code, pack_panels, panel_bytes};

/// Values per block along k.
pub const BLOCK: usize = 32;

/// A GGML block format the kernels multiply natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// f16 scale + 32 signed bytes (34 bytes per block).
    Q8_0,
    /// f16 scale + 32 unsigned nibbles offset by 8 (18 bytes per block).
    Q4_0,
    /// f16 scale + f16 min + 32 unsigned nibbles (20 bytes per block).
    Q4_1,
}

impl BlockFormat {
    /// Bytes of one GGML block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
        }
    }

    /// Bytes of one packed panel block: 16 rows' blocks at the same k (see `panel`).
    pub(crate) fn panel_block_bytes(self) -> usize {
        self.panel_quants_at()
            + match self {
                BlockFormat::Q8_0 => BLOCK * 16,
                BlockFormat::Q4_0 | BlockFormat::Q4_1 => BLOCK / 2 * 16,
            }
    }

    /// Offset of the quants in a packed panel block (after 16 scales, and 16 mins).
    pub(crate) fn panel_quants_at(self) -> usize {
        match self {
            BlockFormat::Q8_0 | BlockFormat::Q4_0 => 32,
            BlockFormat::Q4_1 => 64,
        }
    }
}

/// A rows x cols matrix of GGML blocks, row-major as in a GGUF (each row = cols/32 blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockTensor {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl BlockTensor {
    /// Wraps GGUF block bytes; `cols` must be a multiple of 32 and `bytes` exactly the blocks.
    pub fn new(
        format: BlockFormat,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, KernelError> {
        check_aligned("cols", cols)?;
        let row_bytes = cols / BLOCK * format.block_bytes();
        check_len(
            "block bytes",
            mul("block bytes", rows, row_bytes)?,
            bytes.len(),
        )?;
        Ok(BlockTensor {
            format,
            rows,
            cols,
            bytes,
        })
    }

    /// Quantizes row-major `values` [rows, cols] with ggml's reference rounding.
    pub fn quantize(
        format: BlockFormat,
        values: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        check_aligned("cols", cols)?;
        check_len("values", mul("values", rows, cols)?, values.len())?;
        let mut bytes = Vec::with_capacity(values.len() / BLOCK * format.block_bytes());
        for block in values.chunks_exact(BLOCK) {
            quantize::block(format, block, &mut bytes);
        }
        BlockTensor::new(format, rows, cols, bytes)
    }

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Number of rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input features, a multiple of 32).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major block bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// Rows `range` as a new tensor (a column-parallel shard).
    pub fn slice_rows(&self, range: Range<usize>) -> Result<BlockTensor, KernelError> {
        check_range("rows", &range, self.rows)?;
        let rb = self.row_bytes();
        let bytes = self.bytes[range.start * rb..range.end * rb].to_vec();
        BlockTensor::new(self.format, range.len(), self.cols, bytes)
    }

    /// Columns `range` (both ends multiples of 32) as a new tensor (a row-parallel shard).
    pub fn slice_cols(&self, range: Range<usize>) -> Result<BlockTensor, KernelError> {
        check_range("cols", &range, self.cols)?;
        check_aligned("column range start", range.start)?;
        check_aligned("column range end", range.end)?;
        let bb = self.format.block_bytes();
        let (lo, hi) = (range.start / BLOCK * bb, range.end / BLOCK * bb);
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(self.rows * (hi - lo));
        for row in self.bytes.chunks_exact(rb.max(1)).take(self.rows) {
            bytes.extend_from_slice(&row[lo..hi]);
        }
        BlockTensor::new(self.format, self.rows, range.len(), bytes)
    }

    /// The f32 values (row-major), decoded as GGML's reference dequantization does.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for block in self.bytes.chunks_exact(self.format.block_bytes()) {
            let mut values = [0.0f32; BLOCK];
            decode_block(self.format, block, &mut values);
            out.extend_from_slice(&values);
        }
        out
    }
}

/// Decodes one GGML block (the formulas of the module doc, multiply then add).
pub(crate) fn decode_block(format: BlockFormat, block: &[u8], out: &mut [f32; BLOCK]) {
    let d = half_at(block, 0);
    match format {
        BlockFormat::Q8_0 => {
            for (v, &q) in out.iter_mut().zip(&block[2..]) {
                *v = f32::from(q as i8) * d;
            }
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let (m, qs) = match format {
                BlockFormat::Q4_1 => (half_at(block, 2), &block[4..20]),
                _ => (0.0, &block[2..18]),
            };
            for (j, &q) in qs.iter().enumerate() {
                out[j] = nibble(format, q & 0xF, d, m);
                out[j + 16] = nibble(format, q >> 4, d, m);
            }
        }
    }
}

/// One 4-bit value: `(q - 8) * d` (Q4_0) or `q * d + m` (Q4_1).
#[inline(always)]
pub(crate) fn nibble(format: BlockFormat, q: u8, d: f32, m: f32) -> f32 {
    match format {
        BlockFormat::Q4_0 => (i32::from(q) - 8) as f32 * d,
        _ => f32::from(q) * d + m,
    }
}

/// The little-endian f16 at `at`, widened.
#[inline(always)]
pub(crate) fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Fails unless `value` is a multiple of the block size.
fn check_aligned(what: &'static str, value: usize) -> Result<(), KernelError> {
    if value.is_multiple_of(BLOCK) {
        Ok(())
    } else {
        Err(KernelError::Misaligned {
            what,
            value,
            block: BLOCK,
        })
    }
}

/// Fails unless `range` is an ordered range inside `0..len`.
fn check_range(what: &'static str, range: &Range<usize>, len: usize) -> Result<(), KernelError> {
    if range.start <= range.end && range.end <= len {
        Ok(())
    } else {
        Err(KernelError::Invalid {
            what,
            reason: format!("range {range:?} is not inside 0..{len}"),
        })
    }
}
