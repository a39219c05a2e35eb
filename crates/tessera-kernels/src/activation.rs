//! The SwiGLU gate of the Llama MLP.

use crate::error::{check_len, KernelError};

/// gate[i] = silu(gate[i]) * up[i], with silu(g) = g / (1 + exp(-g)).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    check_len("up", gate.len(), up.len())?;
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
    Ok(())
}
