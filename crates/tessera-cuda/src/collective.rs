//! Collectives on device buffers, as the device forward pass needs them.
//!
//! [`DeviceComm`] is implemented by [`SingleGpu`] (one rank: nothing to do), by
//! [`HostStaged`] (any host `tessera_comm::Communicator`, through host copies) and by
//! `NcclCommunicator` (NCCL on the GPU's stream).

use cudarc::driver::CudaSlice;
use tessera_comm::{CommStats, Communicator};

use crate::device::Gpu;
use crate::error::CudaError;

/// The collectives of one rank's device forward pass.
pub trait DeviceComm {
    /// Ranks in the group.
    fn world_size(&self) -> usize;
    /// Sums `buf[..n]` over the ranks, in place.
    fn all_reduce_sum(
        &mut self,
        gpu: &Gpu,
        buf: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), CudaError>;
    /// Concatenates every rank's `send[..count]` (the same count on every rank) in rank
    /// order into `recv[..world * count]`.
    fn all_gather_device(
        &mut self,
        gpu: &Gpu,
        send: &CudaSlice<f32>,
        count: usize,
        recv: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError>;
    /// Whether its collectives can be captured in a CUDA graph (device-side only, no host
    /// synchronization).
    fn capturable(&self) -> bool {
        false
    }
    /// Counts `calls` collectives of `bytes` that a replayed CUDA graph ran (they bypass
    /// the calls above; their time is not measured).
    fn add_replayed(&mut self, _calls: u64, _bytes: u64) {}
    /// Calls, bytes and time of this rank's collectives so far (none for one rank).
    fn stats(&self) -> CommStats {
        CommStats::default()
    }
}

/// A group of one rank.
#[derive(Debug, Default)]
pub struct SingleGpu;

impl DeviceComm for SingleGpu {
    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(
        &mut self,
        _gpu: &Gpu,
        _buf: &mut CudaSlice<f32>,
        _n: usize,
    ) -> Result<(), CudaError> {
        Ok(())
    }

    fn all_gather_device(
        &mut self,
        gpu: &Gpu,
        send: &CudaSlice<f32>,
        count: usize,
        recv: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        check_gather(send, count, recv, 1)?;
        if count > 0 {
            gpu.stream()
                .memcpy_dtod(&send.slice(..count), &mut recv.slice_mut(..count))?;
        }
        Ok(())
    }

    fn capturable(&self) -> bool {
        true
    }
}

/// Any host communicator, with device buffers staged through host memory (ranks on
/// several GPUs of one process without NCCL; slow, but every rank count works).
pub struct HostStaged<'a>(pub &'a mut dyn Communicator);

impl DeviceComm for HostStaged<'_> {
    fn world_size(&self) -> usize {
        self.0.world_size()
    }

    fn stats(&self) -> CommStats {
        self.0.stats()
    }

    fn all_reduce_sum(
        &mut self,
        gpu: &Gpu,
        buf: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), CudaError> {
        let mut host = gpu.download(buf)?;
        self.0
            .all_reduce_sum(&mut host[..n])
            .map_err(|e| CudaError::Collective(e.to_string()))?;
        gpu.stream().memcpy_htod(&host, buf)?;
        Ok(())
    }

    fn all_gather_device(
        &mut self,
        gpu: &Gpu,
        send: &CudaSlice<f32>,
        count: usize,
        recv: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let world = self.0.world_size();
        check_gather(send, count, recv, world)?;
        let host = gpu.download(send)?;
        let mut out = vec![0.0f32; world * count];
        self.0
            .all_gather(&host[..count], &mut out)
            .map_err(|e| CudaError::Collective(e.to_string()))?;
        if !out.is_empty() {
            gpu.stream()
                .memcpy_htod(&out, &mut recv.slice_mut(..out.len()))?;
        }
        Ok(())
    }
}

/// Checks the buffers of an equal-count all-gather over `world` ranks.
pub(crate) fn check_gather(
    send: &CudaSlice<f32>,
    count: usize,
    recv: &CudaSlice<f32>,
    world: usize,
) -> Result<(), CudaError> {
    if send.len() < count || recv.len() < world * count {
        return Err(CudaError::Collective(format!(
            "all_gather of {count} values over {world} ranks: send holds {}, recv {}",
            send.len(),
            recv.len()
        )));
    }
    Ok(())
}
