//! `NcclCommunicator`: the `tessera_comm::Communicator` trait and [`DeviceComm`] over NCCL,
//! with collectives on the GPU's compute stream.
//!
//! The engine's ranks (one thread per GPU, in one process or several) meet through
//! [`NcclCommunicator::init_rank`] (`ncclCommInitRank`) with one unique id, made by the
//! first node and handed to other nodes over TCP (`tessera_engine::node`);
//! [`NcclCommunicator::init_all`] (`ncclCommInitAll`) makes a whole group at once.

use std::mem::ManuallyDrop;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cudarc::driver::CudaSlice;
use cudarc::nccl::{Comm, Id, ReduceOp};
use tessera_comm::{CommError, CommStats, Communicator};

use crate::collective::DeviceComm;
use crate::device::Gpu;
use crate::error::CudaError;

/// The name cudarc opens NCCL by first (its other names are versioned after CUDA, such
/// as `libnccl.so.13`, never NCCL's own `libnccl.so.2`).
pub const NCCL_LINK_NAME: &str = "libnccl.so";

/// The only NCCL file the `nvidia-nccl-cu13` wheel ships (`site-packages/nvidia/nccl/lib`).
pub const NCCL_WHEEL_FILE: &str = "libnccl.so.2";

/// Whether cudarc can open NCCL by one of its names, as the loader's path stands.
pub fn nccl_loadable() -> bool {
    // SAFETY: only probes dlopen of libnccl's names; no symbol is called.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// The wheel's `libnccl.so.2` in the first of `dirs` that has it (e.g.
/// [`crate::nvrtc::python_cuda_lib_dirs`]).
pub fn find_wheel_nccl(dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .map(|d| d.join(NCCL_WHEEL_FILE))
        .find(|p| p.is_file())
}

/// Says whether cudarc can load NCCL; when it cannot, what the loader said and what to do.
///
/// The loader matches an open library by its path or its soname (`libnccl.so.2`), never by
/// a name cudarc tries, so loading the wheel's file by path here could not help: the
/// `tessera` command links it as `~/.cache/tessera/nccl/libnccl.so` and runs itself again
/// with that folder on `LD_LIBRARY_PATH` (read only at process start). Reaching the error
/// means that was not done (a library user, no `$HOME`) or did not work.
pub fn ensure_nccl(dirs: &[PathBuf]) -> Result<(), CudaError> {
    if nccl_loadable() {
        return Ok(());
    }
    // SAFETY: probes dlopen of NCCL's first name, for the loader's reason.
    let load_error = match unsafe { libloading::Library::new(NCCL_LINK_NAME) } {
        Ok(_) => "it loads now".to_string(),
        Err(e) => e.to_string(),
    };
    // SAFETY: as above, for the versioned name the wheels ship.
    let on_path = unsafe { libloading::Library::new(NCCL_WHEEL_FILE) }.is_ok();
    Err(CudaError::MissingLibrary {
        lib: NCCL_LINK_NAME,
        hint: nccl_hint(find_wheel_nccl(dirs).as_deref(), on_path, &load_error),
    })
}

/// What to do when NCCL does not load: `wheel` is the wheel's file if one was found,
/// `on_path` whether `libnccl.so.2` loads by name, `load_error` the loader's message.
fn nccl_hint(wheel: Option<&Path>, on_path: bool, load_error: &str) -> String {
    match (wheel, on_path) {
        (Some(file), _) => format!(
            "the loader said: {load_error}. Found {} (the NCCL wheel has no libnccl.so); the tessera command links it and runs itself again, which was not done or did not help. By hand: `mkdir -p ~/.cache/tessera/nccl && ln -sf {} ~/.cache/tessera/nccl/libnccl.so` and `export LD_LIBRARY_PATH=~/.cache/tessera/nccl:$LD_LIBRARY_PATH`",
            file.display(),
            file.display()
        ),
        (None, true) => format!("the loader said: {load_error}. libnccl.so.2 is on the loader's path but libnccl.so is not: link `ln -s .../libnccl.so.2 DIR/libnccl.so` and put DIR on LD_LIBRARY_PATH"),
        (None, false) => format!("the loader said: {load_error}. Install NCCL (`python3 -m pip install nvidia-nccl-cu13`; tessera finds it in site-packages/nvidia/nccl/lib through `python3`)"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_nccl_is_found_in_the_first_folder_that_has_it() {
        let root = tempfile::tempdir().expect("temp dir");
        let (empty, first, second) = (
            root.path().join("empty"),
            root.path().join("a"),
            root.path().join("b"),
        );
        for d in [&empty, &first, &second] {
            std::fs::create_dir(d).expect("mkdir");
        }
        std::fs::write(first.join(NCCL_WHEEL_FILE), b"").expect("write");
        std::fs::write(second.join(NCCL_WHEEL_FILE), b"").expect("write");
        let dirs = [empty.clone(), first.clone(), second];
        assert_eq!(find_wheel_nccl(&dirs), Some(first.join(NCCL_WHEEL_FILE)));
        assert_eq!(find_wheel_nccl(&[empty]), None);
    }

    #[test]
    fn nccl_hint_names_the_wheel_file_and_the_loader_error() {
        let file = Path::new("/site/nvidia/nccl/lib/libnccl.so.2");
        let hint = nccl_hint(Some(file), false, "libnccl.so: cannot open");
        assert!(hint.contains("libnccl.so: cannot open"), "{hint}");
        assert!(
            hint.contains("ln -sf /site/nvidia/nccl/lib/libnccl.so.2"),
            "{hint}"
        );
        let hint = nccl_hint(None, false, "nope");
        assert!(hint.contains("pip install nvidia-nccl-cu13"), "{hint}");
    }
}
