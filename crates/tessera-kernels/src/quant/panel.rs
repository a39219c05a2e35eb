//! Quantized panels: 16 rows' blocks at the same k packed together, pairs of k adjacent per
//! row, so that one 32-byte load widens into 16 rows x 2 k of i16 for `pmaddwd`.
//!
//! ```text
//!  panel p, block b (rows 16p .. 16p+15, k = 32b .. 32b+31):
//!  | d[0..16]: f16 | m[0..16]: f16 (Q4_1) | quants: pair groups of 32 bytes
//!  Q8_0: group g (0..16), byte 2o + t = row o's q[2g + t]
//!  Q4_x: group g (0..8),  byte 2o + t = row o's qs[2g + t]
//!        (low nibble: k = 2g + t; high nibble: k = 16 + 2g + t)
//! ```
//!
//! The bytes stay in blocks (scales stay f16), so a GEMV reads as few bytes as the GGUF
//! holds; rows past the matrix are zero blocks and their outputs are never stored.

use super::{BlockFormat, BlockTensor, BLOCK};
use crate::aligned::{line_vec, LineVec};

/// Rows per panel.
const ROWS: usize = 16;

/// Bytes of one packed panel over `k` columns.
pub(crate) fn panel_bytes(format: BlockFormat, k: usize) -> usize {
    k / BLOCK * format.panel_block_bytes()
}

/// Offset, inside a panel block's quants, of row `o`'s stored byte `j` (a Q8_0 value, or a
/// Q4_x pair of nibbles).
#[inline(always)]
pub(crate) fn quant_at(o: usize, j: usize) -> usize {
    j / 2 * 2 * ROWS + 2 * o + j % 2
}

/// Packs a block tensor into panels (`rows.div_ceil(16)` panels of [`panel_bytes`]).
pub(crate) fn pack_panels(t: &BlockTensor) -> LineVec<u8> {
    let f = t.format();
    let (bb, pbb, quants_at) = (f.block_bytes(), f.panel_block_bytes(), f.panel_quants_at());
    let blocks = t.cols() / BLOCK;
    let panels = t.rows().div_ceil(ROWS);
    let mut out = line_vec(0u8, panels * blocks * pbb);
    let row_bytes = t.row_bytes();
    for row in 0..t.rows() {
        let (p, o) = (row / ROWS, row % ROWS);
        for b in 0..blocks {
            let src = &t.bytes()[row * row_bytes + b * bb..][..bb];
            let dst = &mut out[(p * blocks + b) * pbb..][..pbb];
            dst[2 * o..2 * o + 2].copy_from_slice(&src[..2]);
            let qs = match f {
                BlockFormat::Q4_1 => {
                    dst[32 + 2 * o..32 + 2 * o + 2].copy_from_slice(&src[2..4]);
                    &src[4..]
                }
                BlockFormat::Q8_0 | BlockFormat::Q4_0 => &src[2..],
            };
            for (j, &q) in qs.iter().enumerate() {
                dst[quants_at + quant_at(o, j)] = q;
            }
        }
    }
    out
}

/// Row `o`'s integer code for value `j` of a packed panel block (`quants` = its quants):
/// the signed byte (Q8_0), the nibble minus 8 (Q4_0) or the nibble (Q4_1).
#[inline(always)]
pub(crate) fn code(format: BlockFormat, quants: &[u8], o: usize, j: usize) -> i32 {
    match format {
        BlockFormat::Q8_0 => i32::from(quants[quant_at(o, j)] as i8),
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let byte = quants[quant_at(o, j % 16)];
            let nibble = i32::from(if j < 16 { byte & 0xF } else { byte >> 4 });
            if format == BlockFormat::Q4_0 {
                nibble - 8
            } else {
                nibble
            }
        }
    }
}
