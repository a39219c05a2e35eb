//! `NcclCommunicator`: the `tessera_comm::Communicator` trait and [`DeviceComm`] over NCCL,
//! with collectives on the GPU's compute stream.
//!
//! The engine's ranks (one thread per GPU, in one process or several) meet through
//! [`NcclCommunicator::init_rank`] (`ncclCommInitRank`) with one unique id, made by the
//! first node and handed to other nodes over TCP (`tessera_engine::node`);
//! [`NcclCommunicator::init_all`] (`ncclCommInitAll`) makes a whole group at once.

use std::mem::ManuallyDrop;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Instant;

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, Id, ReduceOp};
use tessera_comm::{CommError, CommStats, Communicator};

use crate::collective::DeviceComm;
use crate::device::{preload, Gpu};
use crate::error::CudaError;

/// Makes libnccl loadable, or says what to do. cudarc opens `libnccl.so` (or
/// `libnccl.so.13`...) by name; the `nvidia-nccl-cu13` wheel ships only `libnccl.so.2`
/// (in `site-packages/nvidia/nccl/lib`, one of [`crate::nvrtc::python_cuda_lib_dirs`]).
/// The loader matches an open library by its soname, so loading `libnccl.so.2` from
/// here cannot satisfy cudarc: a name it tries must be on the loader's path, and the
/// error names the file found and the two commands that do it.
pub fn ensure_nccl(dirs: &[PathBuf]) -> Result<(), CudaError> {
    preload(dirs, &["libnccl.so"]);
    // SAFETY: only probes dlopen of libnccl's names.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Ok(());
    }
    let wheel = dirs.iter().find(|d| d.join("libnccl.so.2").is_file());
    // SAFETY: as above, for the versioned name the wheels ship.
    let on_path = unsafe { libloading::Library::new("libnccl.so.2") }.is_ok();
    let hint = match (wheel, on_path) {
        (Some(dir), _) => format!(
            "found {}/libnccl.so.2 (the NCCL wheel has no libnccl.so): run `mkdir -p ~/.cache/tessera/nccl && ln -sf {}/libnccl.so.2 ~/.cache/tessera/nccl/libnccl.so` and `export LD_LIBRARY_PATH=~/.cache/tessera/nccl:$LD_LIBRARY_PATH` (tools/gpu/check.sh does the same)",
            dir.display(),
            dir.display()
        ),
        (None, true) => "libnccl.so.2 is on the loader's path but libnccl.so is not: link `ln -s .../libnccl.so.2 DIR/libnccl.so` and put DIR on LD_LIBRARY_PATH".to_string(),
        (None, false) => "install NCCL (`python3 -m pip install nvidia-nccl-cu13`; it lands in site-packages/nvidia/nccl/lib) and link libnccl.so as this message then says".to_string(),
    };
    Err(CudaError::MissingLibrary {
        lib: "libnccl.so",
        hint,
    })
}

/// One rank's NCCL communicator.
pub struct NcclCommunicator {
    /// Dropped by hand (see `Drop`): cudarc's own drop panics when `ncclCommAbort` fails.
    comm: ManuallyDrop<Comm>,
    stats: CommStats,
}

impl Drop for NcclCommunicator {
    fn drop(&mut self) {
        // SAFETY: `comm` is taken once, here, and `self` is never used again.
        let comm = unsafe { ManuallyDrop::take(&mut self.comm) };
        if std::thread::panicking() {
            // A second panic would abort the process: leak the communicator instead.
            std::mem::forget(comm);
            return;
        }
        // cudarc's `Comm::drop` `expect`s on `ncclCommAbort`: a failing abort (a group
        // whose init failed, a sandbox without peer access) is logged, not fatal.
        if std::panic::catch_unwind(AssertUnwindSafe(|| drop(comm))).is_err() {
            tracing::warn!("ncclCommAbort failed while dropping a communicator");
        }
    }
}

// SAFETY: an NCCL communicator may be used from any thread as long as calls on it are not
// concurrent (NCCL's thread-safety rule). `NcclCommunicator` owns its `Comm` and every
// call takes `&mut self`, so moving it to its rank's thread keeps calls sequential.
unsafe impl Send for NcclCommunicator {}

impl NcclCommunicator {
    /// A group of every GPU in `gpus` (rank i on `gpus[i]`), on their streams.
    pub fn init_all(gpus: &[&Gpu], lib_dirs: &[PathBuf]) -> Result<Vec<Self>, CudaError> {
        ensure_nccl(lib_dirs)?;
        let streams = gpus.iter().map(|g| g.stream().clone()).collect();
        let comms = Comm::from_devices(streams)?;
        Ok(comms
            .into_iter()
            .map(|comm| Self {
                comm: ManuallyDrop::new(comm),
                stats: CommStats::default(),
            })
            .collect())
    }

    /// A new unique id (rank 0 of a multi-process group makes it and hands it out).
    pub fn unique_id(lib_dirs: &[PathBuf]) -> Result<[u8; 128], CudaError> {
        ensure_nccl(lib_dirs)?;
        let id = Id::new()?;
        Ok(id.internal().map(|c| c as u8))
    }

    /// Rank `rank` of `world` ranks in separate processes, meeting by `id`.
    pub fn init_rank(
        gpu: &Gpu,
        rank: usize,
        world: usize,
        id: [u8; 128],
        lib_dirs: &[PathBuf],
    ) -> Result<Self, CudaError> {
        ensure_nccl(lib_dirs)?;
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(gpu.stream().clone(), rank, world, id)?;
        Ok(Self {
            comm: ManuallyDrop::new(comm),
            stats: CommStats::default(),
        })
    }

    fn count(&mut self, bytes: usize, started: Instant) {
        self.stats.calls += 1;
        self.stats.bytes_moved += bytes as u64;
        self.stats.time += started.elapsed();
    }

    fn comm_err(e: impl std::fmt::Debug) -> CommError {
        CommError::Backend(format!("NCCL: {e:?}"))
    }

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>, CommError> {
        let data: &[f32] = if data.is_empty() { &[0.0] } else { data };
        self.comm.stream().clone_htod(data).map_err(Self::comm_err)
    }

    fn download(&self, buf: &CudaSlice<f32>, out: &mut [f32]) -> Result<(), CommError> {
        let host = self.comm.stream().clone_dtoh(buf).map_err(Self::comm_err)?;
        let n = out.len();
        out.copy_from_slice(&host[..n]);
        Ok(())
    }

    /// Every rank's length, in rank order.
    fn lengths(&mut self, n: usize) -> Result<Vec<usize>, CudaError> {
        let stream = self.comm.stream();
        let mine = stream.clone_htod(&[n as i64])?;
        let mut all = stream.alloc_zeros::<i64>(self.comm.world_size())?;
        self.comm.all_gather(&mine, &mut all)?;
        Ok(stream
            .clone_dtoh(&all)?
            .into_iter()
            .map(|v| v.max(0) as usize)
            .collect())
    }

    /// All-gather of uneven lengths: pads every contribution to the longest, then compacts.
    fn gather_uneven(&mut self, local: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>, CudaError> {
        let lengths = self.lengths(n)?;
        let longest = lengths.iter().copied().max().unwrap_or(0).max(1);
        let stream = self.comm.stream();
        let mut padded = stream.alloc_zeros::<f32>(longest)?;
        if n > 0 {
            stream.memcpy_dtod(&local.slice(..n), &mut padded.slice_mut(..n))?;
        }
        let mut all = stream.alloc_zeros::<f32>(longest * lengths.len())?;
        self.comm.all_gather(&padded, &mut all)?;
        let all = stream.clone_dtoh(&all)?;
        let mut out = Vec::with_capacity(lengths.iter().sum());
        for (r, &len) in lengths.iter().enumerate() {
            out.extend_from_slice(&all[r * longest..r * longest + len]);
        }
        Ok(out)
    }
}

impl DeviceComm for NcclCommunicator {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn stats(&self) -> CommStats {
        self.stats
    }

    fn all_reduce_sum(
        &mut self,
        _gpu: &Gpu,
        buf: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        let started = Instant::now();
        self.comm
            .all_reduce_in_place(&mut buf.slice_mut(..n), &ReduceOp::Sum)?;
        self.count(n * 4, started);
        Ok(())
    }

    fn all_gather_device(
        &mut self,
        _gpu: &Gpu,
        send: &CudaSlice<f32>,
        count: usize,
        recv: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let world = self.comm.world_size();
        crate::collective::check_gather(send, count, recv, world)?;
        if count == 0 {
            return Ok(());
        }
        let started = Instant::now();
        self.comm
            .all_gather(&send.slice(..count), &mut recv.slice_mut(..world * count))?;
        self.count(count * 4, started);
        Ok(())
    }

    fn capturable(&self) -> bool {
        true
    }

    fn add_replayed(&mut self, calls: u64, bytes: u64) {
        self.stats.calls += calls;
        self.stats.bytes_moved += bytes;
    }
}

impl Communicator for NcclCommunicator {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        let started = Instant::now();
        let mut d = self.upload(buf)?;
        self.comm
            .all_reduce_in_place(&mut d, &ReduceOp::Sum)
            .map_err(Self::comm_err)?;
        self.download(&d, buf)?;
        self.count(buf.len() * 4, started);
        Ok(())
    }

    fn reduce_scatter_ordered(
        &mut self,
        partials: &[f32],
        len: usize,
        keep: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<(), CommError> {
        // Deterministic by construction: every rank's partials are gathered, then folded
        // on the host in rank order (NCCL's own sum order is not fixed).
        let started = Instant::now();
        tessera_comm::check_partials(len, partials.len())?;
        tessera_comm::check_keep(len, &keep, out.len())?;
        let d = self.upload(partials)?;
        let all = self
            .gather_uneven(&d, partials.len())
            .map_err(|e| CommError::Backend(e.to_string()))?;
        // The gathered ranks' vectors, in rank order, are one run of vectors to fold.
        tessera_comm::fold_contributions(out, len, keep, &[&all])?;
        self.count(partials.len() * 4, started);
        Ok(())
    }

    fn all_gather(&mut self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let started = Instant::now();
        let d = self.upload(local)?;
        let all = self
            .gather_uneven(&d, local.len())
            .map_err(|e| CommError::Backend(e.to_string()))?;
        if all.len() != out.len() {
            return Err(CommError::GatherLength {
                expected: all.len(),
                got: out.len(),
            });
        }
        out.copy_from_slice(&all);
        self.count(local.len() * 4, started);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        let world = self.comm.world_size();
        if root >= world {
            return Err(CommError::BadRoot { root, world });
        }
        let started = Instant::now();
        let mut d = self.upload(buf)?;
        self.comm
            .broadcast_in_place(&mut d, root as i32)
            .map_err(Self::comm_err)?;
        self.download(&d, buf)?;
        self.count(
            if self.comm.rank() == root {
                buf.len() * 4
            } else {
                0
            },
            started,
        );
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        let mut one = [0.0f32];
        Communicator::all_reduce_sum(self, &mut one)?;
        self.comm.stream().synchronize().map_err(Self::comm_err)
    }

    fn stats(&self) -> CommStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = CommStats::default();
    }
}
