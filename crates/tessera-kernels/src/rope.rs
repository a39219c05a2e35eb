//! Rotary position embedding, Hugging Face `rotate_half` layout.
//!
//! ```text
//!  one head of x:  [ x0 x1 .. x(h-1) | xh .. x(2h-1) ]      h = head_dim / 2
//!  pair i:           x_i  <-------------> x_(i+h)
//!  x_i     <- x_i * cos(p f_i) - x_(i+h) * sin(p f_i)
//!  x_(i+h) <- x_(i+h) * cos(p f_i) + x_i * sin(p f_i)
//! ```

use crate::error::{check_len, mul, KernelError};

/// Precomputed cos/sin of `position * inv_freq[i]` for every position below a maximum.
#[derive(Debug, Clone)]
pub struct RopeTable {
    head_dim: usize,
    max_positions: usize,
    /// `[position][i]`, `i < head_dim / 2`.
    cos: Vec<f32>,
    /// Same layout as `cos`.
    sin: Vec<f32>,
}

impl RopeTable {
    /// Table for `head_dim` (even) and positions `0..max_positions`; cos/sin of `pos as f32 * inv_freq[i]` in f32, like Hugging Face.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        inv_freq: &[f32],
    ) -> Result<Self, KernelError> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(KernelError::Invalid {
                what: "head_dim",
                reason: format!("{head_dim} must be even and non-zero"),
            });
        }
        let half = head_dim / 2;
        check_len("inv_freq", half, inv_freq.len())?;
        let size = mul("rope table", max_positions, half)?;
        let mut cos = Vec::with_capacity(size);
        let mut sin = Vec::with_capacity(size);
        for pos in 0..max_positions {
            for &f in inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok(RopeTable {
            head_dim,
            max_positions,
            cos,
            sin,
        })
    }

    /// The default (unscaled) Llama frequencies: `1 / theta^(2i / head_dim)`, computed in f32.
    pub fn default_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
        (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
            .collect()
    }

    /// Head width the table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Positions `0..max_positions()` are covered.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }
}

/// Rotary embedding in place, Hugging Face rotate_half layout (pairs (i, i+head_dim/2)), for rows of `n_heads*head_dim` at the given positions, using a precomputed table.
pub fn rope(
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    positions: &[usize],
    table: &RopeTable,
) -> Result<(), KernelError> {
    check_len("head_dim", table.head_dim, head_dim)?;
    let row = mul("x", n_heads, head_dim)?;
    check_len("x", mul("x", positions.len(), row)?, x.len())?;
    if let Some(&pos) = positions.iter().find(|&&p| p >= table.max_positions) {
        return Err(KernelError::Invalid {
            what: "positions",
            reason: format!(
                "position {pos} is not below the table's {}",
                table.max_positions
            ),
        });
    }
    let half = head_dim / 2;
    for (x_row, &pos) in x.chunks_exact_mut(row.max(1)).zip(positions) {
        let cos = &table.cos[pos * half..(pos + 1) * half];
        let sin = &table.sin[pos * half..(pos + 1) * half];
        for head in x_row.chunks_exact_mut(head_dim) {
            let (lo, hi) = head.split_at_mut(half);
            for (((a, b), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
                let (x1, x2) = (*a, *b);
                *a = x1 * c - x2 * s;
                *b = x2 * c + x1 * s;
            }
        }
    }
    Ok(())
}
