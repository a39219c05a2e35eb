//! cuBLASLt GEMMs: `y[m, n] = x[m, k] · w^T` with f32, bf16 or f16 operands, f32 output
//! and f32 accumulation.
//!
//! Each (m, n, k, dtype) gets its descriptors and the heuristic's algorithm once; later
//! calls only launch. The workspace is allocated once per GPU, so a call allocates nothing
//! and can be captured in a CUDA graph.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::CudaSlice;

use crate::error::CudaError;
use crate::ops::DeviceDtype;

impl From<CublasError> for CudaError {
    fn from(e: CublasError) -> Self {
        Self::CublasLt(e)
    }
}

/// Shape and operand type of one GEMM.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    m: usize,
    n: usize,
    k: usize,
    dtype: DeviceDtype,
}

/// A matrix layout, destroyed on drop.
struct Layout(sys::cublasLtMatrixLayout_t);

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once, here.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

/// A matmul descriptor, destroyed on drop.
struct Desc(sys::cublasLtMatmulDesc_t);

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once, here.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

/// A preference descriptor, destroyed on drop.
struct Pref(sys::cublasLtMatmulPreference_t);

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once, here.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// Descriptors and algorithm of one [`Key`] (each freed on drop, also when making the
/// plan fails halfway).
struct Plan {
    desc: Desc,
    a: Layout,
    b: Layout,
    c: Layout,
    algo: sys::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle, its workspace and the plans made so far.
pub(crate) struct LtGemm {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<Key, Plan>>,
}

// SAFETY: the handle and descriptors are plain cuBLASLt objects that may be used from any
// thread; plans are behind a mutex, and every launch goes to the stream of the owning GPU.
unsafe impl Send for LtGemm {}
// SAFETY: as above; `gemm` takes the plan lock for the whole call.
unsafe impl Sync for LtGemm {}

impl Drop for LtGemm {
    fn drop(&mut self) {
        if let Ok(plans) = self.plans.get_mut() {
            plans.clear();
        }
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// The operand type cuBLASLt calls `dtype`.
fn data_type(dtype: DeviceDtype) -> sys::cudaDataType {
    match dtype {
        DeviceDtype::F32 => sys::cudaDataType::CUDA_R_32F,
        DeviceDtype::Bf16 => sys::cudaDataType::CUDA_R_16BF,
        DeviceDtype::F16 => sys::cudaDataType::CUDA_R_16F,
    }
}

impl LtGemm {
    /// A handle with `workspace` bytes of workspace (32 MiB on Hopper, 4 MiB before).
    pub(crate) fn new(workspace: CudaSlice<u8>) -> Result<Self, CudaError> {
        Ok(Self {
            handle: lt::create_handle()?,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// Makes the plan of `key`: column-major, `y^T [n, m] = op_T(w) [n, k] · x^T [k, m]`.
    fn plan(&self, key: Key) -> Result<Plan, CudaError> {
        let ab = data_type(key.dtype);
        let (m, n, k) = (key.m as u64, key.n as u64, key.k as u64);
        // `w` row-major [n, k] is column-major [k, n] with leading dimension k.
        let a = Layout(lt::create_matrix_layout(ab, k, n, key.k as i64)?);
        let b = Layout(lt::create_matrix_layout(ab, k, m, key.k as i64)?);
        let c = Layout(lt::create_matrix_layout(
            sys::cudaDataType::CUDA_R_32F,
            n,
            m,
            key.n as i64,
        )?);
        let desc = Desc(lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )?);
        // cuBLAS's `cublasOperation_t` (a C enum, 32 bits).
        let transpose = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T as i32;
        // SAFETY: the descriptor is live; the attribute is a 32-bit `cublasOperation_t`.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc.0,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&transpose as *const i32).cast(),
                std::mem::size_of::<i32>(),
            )?;
        }
        let pref = Pref(lt::create_matmul_pref()?);
        let size = self.workspace.len();
        // SAFETY: every descriptor is live; the attribute is a `size_t`.
        let found = unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&size as *const usize).cast(),
                std::mem::size_of::<usize>(),
            )?;
            lt::get_matmul_algo_heuristic(self.handle, desc.0, a.0, b.0, c.0, c.0, pref.0)
        };
        let algo = found
            .map_err(|e| CudaError::Shape {
                op: "gemm",
                reason: format!(
                    "cuBLASLt has no algorithm for m={m} n={n} k={k} {:?}: {e:?}",
                    key.dtype
                ),
            })?
            .algo;
        Ok(Plan {
            desc,
            a,
            b,
            c,
            algo,
        })
    }

    /// `y = x · w^T` (device addresses; lengths checked by the caller) on `stream`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm(
        &self,
        stream: sys::cudaStream_t,
        workspace_ptr: u64,
        dtype: DeviceDtype,
        (m, n, k): (usize, usize, usize),
        w: u64,
        x: u64,
        y: u64,
    ) -> Result<(), CudaError> {
        let key = Key { m, n, k, dtype };
        let mut plans = self.plans.lock().map_err(|_| CudaError::Shape {
            op: "gemm",
            reason: "a thread panicked while holding the GEMM plans".into(),
        })?;
        let plan = match plans.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.plan(key)?),
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (a, b, c) = (plan.a.0, plan.b.0, plan.c.0);
        // SAFETY: the caller passes live device buffers holding at least n*k (w), m*k (x)
        // and m*n (y) elements of the plan's types; the plan's objects are live; the
        // workspace is this handle's, of the size the heuristic was told.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc.0,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                w as *const c_void,
                a,
                x as *const c_void,
                b,
                y as *const c_void,
                c,
                y as *mut c_void,
                c,
                &plan.algo,
                workspace_ptr as *mut c_void,
                self.workspace.len(),
                stream,
            )?;
        }
        Ok(())
    }

    /// The workspace buffer (its address is taken on the GPU's stream).
    pub(crate) fn workspace(&self) -> &CudaSlice<u8> {
        &self.workspace
    }
}
