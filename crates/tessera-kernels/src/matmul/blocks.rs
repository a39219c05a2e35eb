//! The portable tile kernel over quantized panels: the integer steps of
//! [`crate::quant::act`] per output, which every instruction-set path follows lane by lane.

use super::drive::{Shape, TileArgs, PANEL};
use crate::quant::act::block_x;
use crate::quant::{code, half_at, BlockFormat, BLOCK};

/// Tile shape of the portable path over quantized panels.
pub(crate) const SHAPE: Shape = Shape {
    mr: 4,
    np: 1,
    np_gemv: 4,
};

/// Computes one tile's chunk over quantized panels of format `f`: for each output, per
/// block from +0, `acc = fma(d * dx, i, acc)` with `i` the exact integer dot product (and
/// `acc = fma(m, sx, acc)` for Q4_1's min).
///
/// # Safety
/// Rows `0..mr` of the rounded x (`xq`/`xd`/`xs`, `ldx` values apart) hold `k1` columns,
/// panels `0..np` at `w` (`pstride` bytes apart) hold the blocks of `0..k1`, and `out` has
/// room for `mr * np * 16` floats.
pub(crate) unsafe fn tile(f: BlockFormat, w: *const u8, a: &TileArgs) {
    let ld = a.np * PANEL;
    let (pbb, quants_at) = (f.panel_block_bytes(), f.panel_quants_at());
    // SAFETY: `out` has mr * np * 16 floats (contract).
    let out = unsafe { std::slice::from_raw_parts_mut(a.out, a.mr * ld) };
    let mut tmp = [0i16; BLOCK];
    for r in 0..a.mr {
        for p in 0..a.np {
            let mut acc = [0.0f32; PANEL];
            for b in a.k0 / BLOCK..a.k1.div_ceil(BLOCK) {
                // SAFETY: row r holds block b (b * 32 < k1, contract).
                let x = unsafe { block_x(a.xq, a.xd, a.xs, a.ldx, r, b, a.k0, a.k1, &mut tmp) };
                // SAFETY: block_x gives 32 readable values; panel p holds block b.
                let (xq, blk) = unsafe {
                    (
                        std::slice::from_raw_parts(x.q, BLOCK),
                        std::slice::from_raw_parts(w.add(p * a.pstride + b * pbb), pbb),
                    )
                };
                for (o, acc) in acc.iter_mut().enumerate() {
                    let i: i32 = (0..BLOCK)
                        .map(|j| code(f, &blk[quants_at..], o, j) * i32::from(xq[j]))
                        .sum();
                    *acc = (half_at(blk, 2 * o) * x.dx).mul_add(i as f32, *acc);
                    if f == BlockFormat::Q4_1 {
                        *acc = half_at(blk, 32 + 2 * o).mul_add(x.sx, *acc);
                    }
                }
            }
            out[r * ld + p * PANEL..][..PANEL].copy_from_slice(&acc);
        }
    }
}
