//! Quantized panels: 16 rows' blocks at the same k packed together, k-major inside.
//!
//! ```text
//!  panel p, block b (rows 16p .. 16p+15, k = 32b .. 32b+31):
//!  | d[0..16]: f16 | m[0..16]: f16 (Q4_1) | quants, k-major, 16 rows per k
//!  Q8_0 quants: q[j][o]  = row o's q[j]     (32 x 16 bytes)
//!  Q4_x quants: qs[j][o] = row o's qs[j]    (16 x 16 bytes; low nibble k = j, high k = j+16)
//! ```
//!
//! The bytes stay in blocks (scales stay f16), so a GEMV reads as few bytes as the GGUF
//! holds; rows past the matrix are zero blocks and their outputs are never stored.

use super::{half_at, nibble, BlockFormat, BlockTensor, BLOCK};
use crate::aligned::{line_vec, LineVec};

/// Rows per panel.
const ROWS: usize = 16;

/// Bytes of one packed panel over `k` columns.
pub(crate) fn panel_bytes(format: BlockFormat, k: usize) -> usize {
    k / BLOCK * format.panel_block_bytes()
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
                dst[quants_at + j * ROWS + o] = q;
            }
        }
    }
    out
}

/// Decodes one packed panel (`panel_bytes(format, k)` bytes) into f32 panel layout
/// (`out[k * 16 + o]`), with the same formulas as [`decode_block`].
pub(crate) fn decode_panel(format: BlockFormat, panel: &[u8], out: &mut [f32]) {
    let pbb = format.panel_block_bytes();
    let quants_at = format.panel_quants_at();
    for (b, blk) in panel.chunks_exact(pbb).enumerate() {
        let out = &mut out[b * BLOCK * ROWS..][..BLOCK * ROWS];
        for o in 0..ROWS {
            let d = half_at(blk, 2 * o);
            let q = &blk[quants_at..];
            match format {
                BlockFormat::Q8_0 => {
                    for j in 0..BLOCK {
                        out[j * ROWS + o] = f32::from(q[j * ROWS + o] as i8) * d;
                    }
                }
                BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
                    let m = match format {
                        BlockFormat::Q4_1 => half_at(blk, 32 + 2 * o),
                        _ => 0.0,
                    };
                    for j in 0..BLOCK / 2 {
                        let byte = q[j * ROWS + o];
                        out[j * ROWS + o] = nibble(format, byte & 0xF, d, m);
                        out[(j + 16) * ROWS + o] = nibble(format, byte >> 4, d, m);
                    }
                }
            }
        }
    }
}
