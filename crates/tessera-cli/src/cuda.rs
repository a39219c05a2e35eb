//! The CLI's CUDA settings (built with `--features cuda`): library folders, the PTX cache
//! and the engine's CUDA rank loader (`--device cuda` of generate, serve, batch and bench
//! throughput). The hidden `gpu-check` lives in [`crate::gpu_check`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use tessera_cuda::nvrtc::python_cuda_lib_dirs;
use tessera_cuda::{DeviceDtype, GpuOptions};

/// Library folders from Python's site-packages, and a PTX cache under `~/.cache`.
#[allow(
    clippy::disallowed_methods,
    reason = "the CLI is where settings are read: the PTX cache goes under $HOME"
)]
pub(crate) fn gpu_options() -> GpuOptions {
    GpuOptions {
        lib_dirs: python_cuda_lib_dirs(),
        ptx_cache: std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tessera/ptx")),
    }
}

/// Parses a device weight dtype name.
pub(crate) fn device_dtype(s: &str) -> Result<DeviceDtype> {
    DeviceDtype::parse(s).with_context(|| format!("unknown --dtype '{s}' (f32, bf16 or f16)"))
}

/// The engine's CUDA ranks for `--dtype` (rank r on GPU r), KV pool as the model prefers.
pub(crate) fn loader(dtype: &str) -> Result<tessera_cuda::CudaLoader> {
    Ok(tessera_cuda::CudaLoader {
        options: gpu_options(),
        dtype: device_dtype(dtype)?,
        first_device: 0,
        kv: None,
    })
}
