//! One GPU: its context and stream, the kernels of `cuda/` loaded for it, and a cuBLAS
//! handle.
//!
//! Every CUDA library is probed before its first call (cudarc panics when a library it
//! needs cannot be loaded), so a missing driver or library is a typed error.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use crate::error::CudaError;
use crate::lt::LtGemm;
use crate::nvrtc::{compile_cached, ensure_nvrtc, Arch, KERNEL_FILES};
use crate::ops::DeviceDtype;

/// Where to find CUDA's user-space libraries and where to cache compiled kernels.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Folders tried, in order, for libnvrtc and libcublas when the loader's path lacks
    /// them (e.g. [`crate::nvrtc::python_cuda_lib_dirs`]).
    pub lib_dirs: Vec<PathBuf>,
    /// Folder for compiled PTX (`None`: compile every time).
    pub ptx_cache: Option<PathBuf>,
}

/// A kernel argument: device pointers travel as plain 64-bit addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device address.
    Ptr(u64),
    /// `int`.
    I32(i32),
    /// `long`.
    I64(i64),
    /// `unsigned long long`.
    U64(u64),
    /// `float`.
    F32(f32),
}

/// Whether the CUDA driver library (libcuda) can be loaded, without touching a GPU.
pub fn driver_present() -> bool {
    // SAFETY: only probes dlopen of libcuda's names; no symbol is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Loads `names` from the first folder of `dirs` that has each, keeping them loaded, so
/// that cudarc's later load by name finds them by their sonames.
pub(crate) fn preload(dirs: &[PathBuf], names: &[&str]) {
    for name in names {
        for dir in dirs {
            let path = dir.join(name);
            if path.is_file() {
                // SAFETY: loading NVIDIA's libraries runs only their initializers, which
                // have no preconditions.
                if let Ok(lib) = unsafe { libloading::Library::new(&path) } {
                    // Kept for the life of the process: cudarc resolves symbols later.
                    std::mem::forget(lib);
                    break;
                }
            }
        }
    }
}

/// One GPU with Tessera's kernels loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    lt: LtGemm,
    functions: HashMap<String, CudaFunction>,
    arch: Arch,
    name: String,
    sms: usize,
}

impl Gpu {
    /// Opens GPU `ordinal`: checks the driver, compiles (or reads cached) kernels for its
    /// compute capability, and creates a cuBLAS handle on its stream.
    pub fn new(ordinal: usize, options: &GpuOptions) -> Result<Self, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count()?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice(ordinal));
        }
        let ctx = CudaContext::new(ordinal)?;
        // cudarc records an event per buffer access to order streams; at a few microseconds
        // each, thousands per decode step would cost milliseconds.
        // SAFETY: every buffer of this crate is allocated, used and freed on the stream of
        // the `Gpu` that made it (NCCL runs on that stream too), so no buffer crosses
        // streams and stream order alone keeps accesses in sequence.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = Arch { major, minor };
        let name = ctx.name()?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )?
            .max(1) as usize;
        ensure_nvrtc(&options.lib_dirs)?;
        let mut functions = HashMap::new();
        for (file, src) in KERNEL_FILES {
            let ptx = compile_cached(file, src, arch, options.ptx_cache.as_deref())?;
            let entries = entry_names(&ptx);
            let module = ctx.load_module(Ptx::from_src(ptx))?;
            for entry in entries {
                let f = module.load_function(&entry)?;
                functions.insert(entry, f);
            }
        }
        preload(&options.lib_dirs, &["libcublasLt.so.13", "libcublas.so.13"]);
        // SAFETY: only probes dlopen of libcublasLt's names.
        if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
            return Err(CudaError::MissingLibrary {
                lib: "libcublasLt.so.13",
                hint: "install `nvidia-cublas` (pip) or add its site-packages/nvidia/cu13/lib to LD_LIBRARY_PATH".to_string(),
            });
        }
        // NVIDIA's advice for cuBLASLt workspaces: 32 MiB on Hopper, 4 MiB before.
        let workspace_bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        // SAFETY: the workspace is scratch memory for cuBLASLt; nothing reads it before
        // cuBLASLt writes it.
        let workspace = unsafe { stream.alloc::<u8>(workspace_bytes) }?;
        let lt = LtGemm::new(workspace)?;
        tracing::info!(ordinal, %name, arch = %arch.target(), kernels = functions.len(), "GPU ready");
        Ok(Self {
            ctx,
            stream,
            lt,
            functions,
            arch,
            name,
            sms,
        })
    }

    /// Streaming multiprocessors of the device.
    pub fn sm_count(&self) -> usize {
        self.sms
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The compute capability the kernels were compiled for.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The stream every op of this GPU runs on, in order.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// `y[m, n] = x[m, k] · w^T` by cuBLASLt on this GPU's stream (addresses of live
    /// buffers whose lengths the caller checked; `x` and `w` of `dtype`, `y` f32).
    pub(crate) fn gemm_lt(
        &self,
        dtype: DeviceDtype,
        mnk: (usize, usize, usize),
        w: u64,
        x: u64,
        y: u64,
    ) -> Result<(), CudaError> {
        // cuBLASLt runs in the thread's current context: make it this GPU's.
        self.ctx.bind_to_thread()?;
        let workspace = self.ptr(self.lt.workspace());
        self.lt.gemm(
            self.stream.cu_stream() as cudarc::cublaslt::sys::cudaStream_t,
            workspace,
            dtype,
            mnk,
            w,
            x,
            y,
        )
    }

    /// Waits for all queued work; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize()?;
        Ok(())
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.clone_htod(data)?)
    }

    /// Copies a device buffer to the host (waits for it).
    pub fn download<T: DeviceRepr>(&self, data: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        Ok(self.stream.clone_dtoh(data)?)
    }

    /// Copies the first `n` elements of a device buffer (at most its length) to the host.
    pub fn download_prefix<T: DeviceRepr>(
        &self,
        data: &CudaSlice<T>,
        n: usize,
    ) -> Result<Vec<T>, CudaError> {
        let n = n.min(data.len());
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(self.stream.clone_dtoh(&data.slice(..n))?)
    }

    /// A zeroed device buffer of `len` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        Ok(self.stream.alloc_zeros(len.max(1))?)
    }

    /// A device buffer of `len` elements left unset (no memset launch), for outputs that a
    /// kernel writes whole before anything reads them.
    pub(crate) fn scratch(&self, len: usize) -> Result<CudaSlice<f32>, CudaError> {
        // SAFETY: f32 has no invalid bit patterns, and callers write every element they
        // later read (each use names the kernel that does).
        Ok(unsafe { self.stream.alloc::<f32>(len.max(1)) }?)
    }

    /// The device address of `buf`, for a kernel argument.
    pub(crate) fn ptr<T>(&self, buf: &CudaSlice<T>) -> u64 {
        let (p, _sync) = buf.device_ptr(&self.stream);
        p
    }

    /// Launches kernel `name` on the stream.
    pub(crate) fn launch(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        let f = self.functions.get(name).ok_or_else(|| CudaError::Shape {
            op: "launch",
            reason: format!("no kernel named {name} was compiled"),
        })?;
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let mut builder = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(v) | Arg::U64(v) => builder.arg(v),
                Arg::I32(v) => builder.arg(v),
                Arg::I64(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every caller (the checked wrappers of `ops`) passes arguments matching
        // the kernel's C signature, device addresses of live buffers sized for the grid.
        unsafe { builder.launch(cfg) }?;
        Ok(())
    }
}

/// The `.entry` names of a PTX module.
fn entry_names(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix(".visible .entry ")?;
            Some(rest.split('(').next()?.trim().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_read_from_ptx() {
        let ptx = ".visible .entry rms_norm_f32(\n.param .u64 a\n)\n.visible .entry add_f32(\n";
        assert_eq!(entry_names(ptx), vec!["rms_norm_f32", "add_f32"]);
    }
}
