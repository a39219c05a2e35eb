//! RMSNorm and the fused residual add + RMSNorm that precedes every Llama sub-layer.
//!
//! The mean square of a row is summed in 16 lanes with the same tree as attention scores
//! (plain multiply and add, no fma), so it depends on the row alone.

use crate::dot16::tree_sum;
use crate::error::{check_len, KernelError};

/// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight for each row r of width `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    check_rows(x.len(), weight.len())?;
    check_len("out", x.len(), out.len())?;
    for (row, out_row) in x
        .chunks_exact(weight.len())
        .zip(out.chunks_exact_mut(weight.len()))
    {
        norm_row(row, weight, eps, out_row);
    }
    Ok(())
}

/// residual[r] += delta[r] for each row, then out[r] = rmsnorm(residual[r]) * weight (eps), rows of width `weight.len()` (fused add + RMSNorm).
pub fn add_rms_norm(
    residual: &mut [f32],
    delta: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_rows(residual.len(), weight.len())?;
    check_len("delta", residual.len(), delta.len())?;
    check_len("out", residual.len(), out.len())?;
    let dim = weight.len();
    let rows = residual
        .chunks_exact_mut(dim)
        .zip(delta.chunks_exact(dim))
        .zip(out.chunks_exact_mut(dim));
    for ((row, delta_row), out_row) in rows {
        for (r, &d) in row.iter_mut().zip(delta_row) {
            *r += d;
        }
        norm_row(row, weight, eps, out_row);
    }
    Ok(())
}

/// Fails unless `len` is a whole number of rows of a non-empty width.
fn check_rows(len: usize, dim: usize) -> Result<(), KernelError> {
    if dim == 0 || !len.is_multiple_of(dim) {
        return Err(KernelError::Invalid {
            what: "weight",
            reason: format!("row width {dim} must be non-zero and divide the input length {len}"),
        });
    }
    Ok(())
}

/// Normalises one row (Hugging Face order: `x * rsqrt(mean + eps)`, then `* weight`).
fn norm_row(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean = sum_squares(x) / x.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(weight) {
        *o = v * inv * g;
    }
}

/// Σ x² in 16 lanes plus the fixed tree.
fn sum_squares(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for chunk in x.chunks(16) {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += v * v;
        }
    }
    tree_sum(&acc)
}
