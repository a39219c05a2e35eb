//! Portable tile kernel: 16 `f32` lanes per accumulator, `f32::mul_add` per lane.

use super::{tree_sum, Operands, Tile, TileShape};
use crate::matmul::Elem;

/// Tile shape of the portable path.
pub(crate) const SHAPE: TileShape = TileShape {
    mr: 4,
    nr: 4,
    nr_gemv: 4,
};

const MAX_MR: usize = 4;
const MAX_NR: usize = 4;

/// Computes the `mr x nr` outputs at (row `i`, column `j`) of `op`.
///
/// # Safety
/// Rows `i..i+mr` and columns `j..j+nr` must lie inside what `op`'s contract covers, and
/// `mr <= 4`, `nr <= 4`.
pub(crate) unsafe fn tile<E: Elem>(op: &Operands<E>, t: Tile) {
    let Tile { i, mr, j, nr, .. } = t;
    let k = op.k;
    let mut xs: [&[f32]; MAX_MR] = [&[]; MAX_MR];
    for (r, row) in xs.iter_mut().take(mr).enumerate() {
        // SAFETY: row i+r < m has k readable floats at (i+r)*ldx by the Operands contract.
        *row = unsafe { std::slice::from_raw_parts(op.x.add((i + r) * op.ldx), k) };
    }
    let mut ws: [&[E]; MAX_NR] = [&[]; MAX_NR];
    for (c, row) in ws.iter_mut().take(nr).enumerate() {
        // SAFETY: weight row j+c is in the covered column range, k elements at (j+c)*ldw.
        *row = unsafe { std::slice::from_raw_parts(op.w.add((j + c) * op.ldw), k) };
    }
    let mut total = [[0.0f32; MAX_NR]; MAX_MR];
    let (mut c0, mut ci) = (0, 0);
    loop {
        let c1 = super::chunk_end(op.chunk, k, c0);
        let mut acc = [[[0.0f32; 16]; MAX_NR]; MAX_MR];
        for k0 in (c0..c1).step_by(16) {
            let lanes = 16.min(c1 - k0);
            for (acc_row, x) in acc.iter_mut().zip(&xs).take(mr) {
                let x = &x[k0..k0 + lanes];
                for (a, w) in acc_row.iter_mut().zip(&ws).take(nr) {
                    let w = &w[k0..k0 + lanes];
                    for (lane, (&xv, &wv)) in x.iter().zip(w).enumerate() {
                        a[lane] = xv.mul_add(wv.to_f32(), a[lane]);
                    }
                }
            }
        }
        for (r, (acc_row, total_row)) in acc.iter().zip(total.iter_mut()).enumerate().take(mr) {
            for (c, (a, tot)) in acc_row
                .iter()
                .zip(total_row.iter_mut())
                .enumerate()
                .take(nr)
            {
                let s = tree_sum(a);
                // SAFETY: (i + r, j + c) is inside this tile, which our caller covers.
                unsafe { super::take_chunk_sum(op, ci, i + r, j + c, s, tot) };
            }
        }
        ci += 1;
        c0 = c1;
        if c0 >= k {
            break;
        }
    }
    // SAFETY: the tile is inside what our caller covers.
    unsafe { super::store_folded(op, i, j, &total, mr, nr) };
}
