//! Tessera's CPU hot path: matmul (GEMV and GEMM), fused add + RMSNorm, SiLU-gating,
//! rotary embeddings, causal attention and argmax, with the worker pool they run on.
//!
//! # One reduction order, by construction
//!
//! Every matmul output `y[i][j] = x[i] · w[j] (+ bias[j])` is computed with one fixed
//! order of floating-point operations over k, whatever the batch size m (GEMV or GEMM),
//! the tile, the weight storage (row-major, packed, bf16, quantized), the instruction set
//! and the number of threads. So a row's result is bit-identical in every setting:
//!
//! ```text
//!  for each output (i, j), for each reduction chunk c (one chunk unless chunked):
//!      acc = +0.0
//!      for k in chunk c, in order:   acc = fma(x[i][k], w[j][k], acc)
//!  y[i][j] = ((s_0 + s_1) + s_2) ... + bias[j]      (chunk sums left to right)
//!
//!  vectorised ACROSS outputs, never across k (no horizontal sums):
//!      k:   0      1      2     ...
//!      zmm  [w(16p..16p+15, 0)] [.. , 1] [.. , 2]      one panel = 16 outputs
//!      acc(16 outputs) = fma(broadcast x[i][k], panel[k], acc)
//! ```
//!
//! - AVX-512 holds a panel's 16 accumulators in one `zmm` (tiles of 8 rows x 2 panels);
//!   AVX2 + FMA in two `ymm` (6 rows x 1 panel); the portable path runs `f32::mul_add`.
//!   Fused multiply-add is exactly rounded everywhere, so all three give identical bits.
//! - Tiles, row blocks and thread ranges only choose which accumulators are live together;
//!   threads split the output columns, so a thread count never changes what an element is
//!   computed from. The instruction set is detected once, when a [`CpuPool`] is made.
//! - bf16 weights are widened exactly (`bits << 16`) and quantized blocks are decoded
//!   exactly as GGML's reference dequantization ([`BlockTensor::dequantize`]) before their
//!   fma, so they give the same bits as converting the weights to f32 first.
//!
//! Attention scores and norms keep a 16-lane order with a fixed tree (module `dot16`).
//! The softmax and the SiLU gate use one fixed-order `exp` (module `exp`), whose 16-lane,
//! 8-lane and portable versions give the same bits; the softmax sums in dot16's order.
//!
//! The other kernels follow the same rule: each output depends on its own row only, in an
//! order fixed by the row (attention: by the query position), never by t or by threads.

mod activation;
mod aligned;
mod argmax;
mod attention;
mod axpy;
mod dot16;
mod error;
mod exp;
mod isa;
mod matmul;
mod norm;
mod paged_attention;
mod pool;
mod quant;
mod rope;

pub use activation::silu_mul;
pub use aligned::{line_vec, LineVec, LINE};
pub use argmax::argmax;
pub use attention::{attention, AttentionShape};
pub use error::KernelError;
pub use isa::Isa;
pub use matmul::{
    chunk_count, matmul, matmul_bf16_reference, matmul_chunked, matmul_chunked_reference,
    matmul_packed, matmul_packed_chunked, matmul_reference, ChunkOutput, PackedMatrix,
    PackedWeight, WeightRef,
};
pub use norm::{add_rms_norm, rms_norm};
pub use paged_attention::{paged_attention, paged_attention_bf16, PagedSeq, PagedShape};
pub use pool::CpuPool;
pub use quant::{BlockFormat, BlockTensor, BLOCK};
pub use rope::{rope, RopeTable};
