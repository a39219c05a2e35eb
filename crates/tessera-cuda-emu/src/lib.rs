//! Dev-only: the kernels of `cuda/` compiled as C++ and run on the CPU, so CI checks
//! their indexing and arithmetic without a GPU (the tests compare each with its CPU
//! reference).
//!
//! What is emulated (`emu/cuda_emu.h`, `emu/runtime.cpp`): grids and blocks
//! (`gridDim`/`blockIdx`/`blockDim`/`threadIdx`), each block's threads as fibers that
//! switch only at barriers, so `__syncthreads` and full-warp shuffles/ballots (32 lanes)
//! really synchronise; `__shared__` memory per block; atomics; the math intrinsics the
//! kernels use (as the precise libm functions); bf16/f16 storage with round-to-nearest-
//! even conversions. Device buffers are [`DevBuf`]s with `PROT_NONE` guard pages on both
//! sides and the data flush against one of them ([`Placement`]), so an index past either
//! end faults (SIGSEGV fails the test run). A barrier some threads never reach, a shuffle
//! after a lane returned or with a partial-warp mask is reported as an error.
//!
//! What it does not cover: timing and occupancy; the memory model (blocks run one after
//! another, so races between blocks and missing fences go unseen); `__launch_bounds__`
//! and register limits; out-of-bounds *shared* memory (it is a plain static array);
//! intrinsic precision (`__expf` is `expf`); inline PTX (replaced by C code under
//! `TESSERA_EMU`); cuBLASLt GEMMs, NCCL collectives, CUDA graphs and streams. Launch
//! configurations are restated by the tests, not taken from `tessera-cuda`'s wrappers.

use std::ffi::{c_char, c_int, c_void};

pub mod kernels;
mod mem;

pub use mem::{DevBuf, Placement};

/// Why an emulated launch failed.
#[derive(Debug, thiserror::Error)]
pub enum EmuError {
    /// The kernel misused the thread model (or the block shape was invalid).
    #[error("emulated launch failed: {0}")]
    Launch(String),
    /// Guarded memory could not be mapped.
    #[error("could not map {bytes} bytes of guarded memory")]
    Map {
        /// The size asked for.
        bytes: usize,
    },
}

extern "C" {
    fn emu_launch(
        grid: *const u32,
        threads: *const u32,
        body: extern "C" fn(*mut c_void),
        ctx: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
}

extern "C" fn call<F: Fn()>(ctx: *mut c_void) {
    // SAFETY: `ctx` is the `&F` that `launch` passed, alive for the whole launch.
    let f = unsafe { &*(ctx as *const F) };
    f();
}

/// Runs `kernel` (a closure calling one `extern "C"` kernel of [`kernels`]) as every
/// thread of a `grid` of blocks of `block` threads.
pub fn launch<F: Fn()>(grid: [u32; 3], block: [u32; 3], kernel: F) -> Result<(), EmuError> {
    let mut err = [0 as c_char; 256];
    // SAFETY: the arrays hold 3 values; `kernel` outlives the call; `err` is writable for
    // its length and the runtime writes a NUL-terminated string into it.
    let rc = unsafe {
        emu_launch(
            grid.as_ptr(),
            block.as_ptr(),
            call::<F>,
            &kernel as *const F as *mut c_void,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let bytes: Vec<u8> = err
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Err(EmuError::Launch(
        String::from_utf8_lossy(&bytes).into_owned(),
    ))
}
