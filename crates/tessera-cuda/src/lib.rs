//! The CUDA backend: kernels of `cuda/` compiled at run time by NVRTC, cuBLAS GEMMs,
//! NCCL collectives, and a device-resident forward pass of one rank.
//!
//! Nothing here touches a CUDA library before checking that it can be loaded (cudarc
//! panics otherwise): a machine without a driver gets [`CudaError::NoDriver`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod collective;
mod device;
pub mod engine;
mod error;
pub mod generate;
mod lt;
pub mod model;
pub mod nccl;
pub mod nvrtc;
pub mod ops;
pub mod reference;

pub use device::{driver_present, Gpu, GpuOptions};
pub use engine::CudaLoader;
pub use error::CudaError;
pub use model::{CudaKvCache, CudaRankModel, DeviceLogits, WeightSource};
pub use ops::DeviceDtype;
