//! Tessera's CPU hot path: matmul (GEMV and GEMM), fused add + RMSNorm, SiLU-gating,
//! rotary embeddings, causal attention and argmax, with the worker pool they run on.
//!
//! # One reduction order, by construction
//!
//! Every matmul output `y[i][j] = x[i] · w[j] (+ bias[j])` is computed with one fixed
//! order of floating-point operations over k, whatever the batch size m, the kernel
//! variant (GEMV, register-blocked GEMM, row-blocked prefill GEMM), the instruction set
//! and the number of threads. So a row's result is bit-identical in every setting:
//!
//! ```text
//!  k:     0 ........ 15 | 16 ....... 31 | ... | 16c ... k-1 (short chunk)
//!  lane:  0 ........ 15 | 0 ........ 15 | ... | 0 .. r-1   (lanes r..15 untouched)
//!         acc[l] = fma(x[k0+l], w[k0+l], acc[l])   for k0 = 0, 16, 32, ...
//!
//!  acc: [ 0  1  2  3  4  5  6  7 | 8  9 10 11 12 13 14 15 ]
//!          \__________ + ___________/          lanes l, l+8  -> 8
//!         [ 0  1  2  3 | 4  5  6  7 ]          lanes l, l+4  -> 4
//!         [ 0  1 | 2  3 ]                      lanes l, l+2  -> 2
//!         [ 0 | 1 ]                            lanes 0, 1    -> 1, then + bias[j]
//! ```
//!
//! - AVX-512 holds one accumulator in one `zmm`; tail lanes use a masked fma.
//! - AVX2 + FMA holds it in two `ymm` (lanes 0-7, 8-15) doing the same per-lane fmas; the
//!   tail's missing lanes are restored with a blend.
//! - The portable path runs `f32::mul_add` per lane.
//!
//! Fused multiply-add is exactly rounded everywhere, so all three give identical bits.
//! Register tiles (4 x rows x 4 w rows of accumulators on AVX-512) only choose which
//! accumulators are live together; each still sees the same fma sequence. Threads split
//! the output columns, so a thread count never changes what an element is computed from.
//! The instruction set is detected once, when a [`CpuPool`] is made, never per call.
//!
//! bf16 weights are widened exactly (`bits << 16`) as they are loaded, then follow the same
//! order, so they give the same bits as converting the weights to f32 first.
//!
//! The other kernels follow the same rule: each output depends on its own row only, in an
//! order fixed by the row (attention: by the query position), never by t or by threads.

mod activation;
mod argmax;
mod attention;
mod axpy;
mod error;
mod isa;
mod matmul;
mod norm;
mod paged_attention;
mod pool;
mod rope;

pub use activation::silu_mul;
pub use argmax::argmax;
pub use attention::{attention, AttentionShape};
pub use error::KernelError;
pub use isa::Isa;
pub use matmul::{
    chunk_count, matmul, matmul_chunked, matmul_chunked_reference, matmul_reference, ChunkOutput,
    WeightRef,
};
pub use norm::{add_rms_norm, rms_norm};
pub use paged_attention::{paged_attention, PagedSeq, PagedShape};
pub use pool::CpuPool;
pub use rope::{rope, RopeTable};
