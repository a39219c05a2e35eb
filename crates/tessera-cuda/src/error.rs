//! The CUDA backend's error type.

use std::path::PathBuf;

/// Everything the CUDA backend can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libcuda could not be loaded.
    #[error("built with CUDA but no CUDA driver found (libcuda.so could not be loaded); run on a machine with an NVIDIA driver, or use --device cpu")]
    NoDriver,
    /// The driver loaded but reported no device.
    #[error("CUDA driver found but it reports no GPU (device {0} requested)")]
    NoDevice(usize),
    /// libnvrtc could not be loaded.
    #[error("NVRTC (libnvrtc.so.13) not found: install it with `python3 -m pip install nvidia-cuda-nvrtc==13.0.88` (it lands in site-packages/nvidia/cu13/lib) or put a CUDA 13.0 libnvrtc on LD_LIBRARY_PATH{tried}")]
    NoNvrtc {
        /// Where it was looked for, pre-formatted.
        tried: String,
    },
    /// A CUDA library other than the driver and NVRTC is missing.
    #[error("{lib} not found on LD_LIBRARY_PATH: {hint}")]
    MissingLibrary {
        /// The library's name.
        lib: &'static str,
        /// What to do about it.
        hint: String,
    },
    /// NVRTC rejected a kernel source or warned about it.
    #[error("NVRTC failed on cuda/{file} for {arch}: {log}")]
    Compile {
        /// The source file.
        file: String,
        /// The target architecture.
        arch: String,
        /// The compiler's log.
        log: String,
    },
    /// A driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// A cuBLASLt call failed.
    #[error("cuBLASLt: {0:?}")]
    CublasLt(cudarc::cublaslt::result::CublasError),
    /// An NCCL call failed.
    #[error("NCCL: {0:?}")]
    Nccl(cudarc::nccl::result::NcclError),
    /// A kernel was called with inconsistent shapes.
    #[error("bad shape for {op}: {reason}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A collective failed.
    #[error("collective: {0}")]
    Collective(String),
    /// Loading the model failed.
    #[error(transparent)]
    Model(#[from] tessera_model::ModelError),
}

impl From<cudarc::nccl::result::NcclError> for CudaError {
    fn from(e: cudarc::nccl::result::NcclError) -> Self {
        Self::Nccl(e)
    }
}

/// Fails with a [`CudaError::Shape`] unless `ok`.
pub(crate) fn ensure(
    ok: bool,
    op: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Shape {
            op,
            reason: reason(),
        })
    }
}
