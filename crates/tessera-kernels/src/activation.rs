//! The SwiGLU gate of the Llama MLP.

use crate::error::{check_len, KernelError};
use crate::pool::CpuPool;

/// gate[i] = silu(gate[i]) * up[i], with silu(g) = g / (1 + exp(-g)) and `exp` the
/// fixed-order lane of module `exp`: the same bits on every instruction set. Runs on the
/// calling thread with the pool's instruction set.
pub fn silu_mul(pool: &CpuPool, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    check_len("up", gate.len(), up.len())?;
    crate::exp::silu_mul_rows(pool.isa(), gate, up);
    Ok(())
}
