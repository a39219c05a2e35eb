//! The CUDA backend: kernels of `cuda/` compiled at run time by NVRTC, cuBLAS GEMMs,
//! NCCL collectives, and a device-resident forward pass of one rank.
//!
//! Nothing here touches a CUDA library before checking that it can be loaded (cudarc
//! panics otherwise): a machine without a driver gets [`CudaError::NoDriver`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod error;
pub mod nvrtc;

pub use error::CudaError;
