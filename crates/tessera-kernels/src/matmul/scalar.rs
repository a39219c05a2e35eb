//! Portable tile kernel: a `f32::mul_add` chain over k per output, 16 outputs per panel.

use super::drive::{Shape, TileArgs, PANEL};

/// Tile shape of the portable path.
pub(crate) const SHAPE: Shape = Shape {
    mr: 4,
    np: 1,
    np_gemv: 4,
};

/// Computes one tile's chunk: `out[r][p][o] = chain over k0..k1 of fma(x[r][k], w_p[k][o], acc)`.
///
/// # Safety
/// Rows `0..mr` of x (`ldx` apart) hold `k1` floats, panels `0..np` at `w` (`pstride`
/// elements apart) hold `16 k1` elements, and `out` has room for `mr * np * 16` floats.
pub(crate) unsafe fn tile(w: *const f32, a: &TileArgs) {
    let ld = a.np * PANEL;
    // SAFETY: `out` has mr * np * 16 floats (contract).
    let out = unsafe { std::slice::from_raw_parts_mut(a.out, a.mr * ld) };
    for r in 0..a.mr {
        // SAFETY: row r holds k1 floats (contract).
        let x = unsafe { std::slice::from_raw_parts(a.x.add(r * a.ldx), a.k1) };
        for p in 0..a.np {
            // SAFETY: panel p holds 16 * k1 elements (contract).
            let wp = unsafe { std::slice::from_raw_parts(w.add(p * a.pstride), PANEL * a.k1) };
            let mut acc = [0.0f32; PANEL];
            for kk in a.k0..a.k1 {
                let xv = x[kk];
                for (o, v) in acc.iter_mut().enumerate() {
                    *v = xv.mul_add(wp[kk * PANEL + o], *v);
                }
            }
            out[r * ld + p * PANEL..][..PANEL].copy_from_slice(&acc);
        }
    }
}
