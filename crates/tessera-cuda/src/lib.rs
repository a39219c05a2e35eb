//! The CUDA backend: kernels of `cuda/` compiled at run time by NVRTC, cuBLAS GEMMs,
//! NCCL collectives, and [`CudaBackend`], on which the shared forward pass of
//! `tessera_model` runs one rank on a GPU.
//!
//! Nothing here touches a CUDA library before checking that it can be loaded (cudarc
//! panics otherwise): a machine without a driver gets [`CudaError::NoDriver`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod attend;
pub mod backend;
pub mod cache;
pub mod collective;
mod device;
pub mod engine;
mod error;
mod lt;
pub mod model;
pub mod nccl;
pub mod nvrtc;
pub mod ops;
pub mod reference;
mod step;

pub use backend::CudaBackend;
pub use cache::{CudaKvCache, KvDtype};
pub use device::{driver_present, Gpu, GpuOptions};
pub use engine::CudaLoader;
pub use error::CudaError;
pub use model::CudaRankModel;
pub use ops::DeviceDtype;
pub use step::{CudaStep, StepKey};
