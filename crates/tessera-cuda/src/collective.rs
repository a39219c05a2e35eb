//! Collectives on device buffers, as the device forward pass needs them.
//!
//! [`DeviceComm`] is implemented by [`SingleGpu`] (one rank: nothing to do) and by
//! `NcclCommunicator` (NCCL on the GPU's stream).

use cudarc::driver::CudaSlice;
use tessera_comm::CommStats;

use crate::device::Gpu;
use crate::error::CudaError;

/// The collectives of one rank's device forward pass.
pub trait DeviceComm {
    /// This rank's index in the group.
    fn rank(&self) -> usize;
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
    fn rank(&self) -> usize {
        0
    }

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
