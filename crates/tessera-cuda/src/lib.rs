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
mod device_step;
mod error;
pub mod loader;
mod lt;
pub mod model;
pub mod nccl;
pub mod nvrtc;
pub mod ops;
pub mod reference;

pub use backend::CudaBackend;
pub use cache::{CudaKvCache, KvDtype};
pub use device::{driver_present, Gpu, GpuOptions};
pub use device_step::{CudaStep, StepKey};
pub use error::CudaError;
pub use loader::CudaLoader;
pub use model::CudaRankModel;
pub use ops::DeviceDtype;
