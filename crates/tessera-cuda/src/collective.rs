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
    /// Concatenates every rank's `local[..n]` (lengths may differ) in rank order, on the
    /// host (`total` values in all).
    fn all_gather_to_host(
        &mut self,
        gpu: &Gpu,
        local: &CudaSlice<f32>,
        n: usize,
        total: usize,
    ) -> Result<Vec<f32>, CudaError>;
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

    fn all_gather_to_host(
        &mut self,
        gpu: &Gpu,
        local: &CudaSlice<f32>,
        n: usize,
        _total: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let mut v = gpu.download(local)?;
        v.truncate(n);
        Ok(v)
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

    fn all_gather_to_host(
        &mut self,
        gpu: &Gpu,
        local: &CudaSlice<f32>,
        n: usize,
        total: usize,
    ) -> Result<Vec<f32>, CudaError> {
        let host = gpu.download(local)?;
        let mut out = vec![0.0f32; total];
        self.0
            .all_gather(&host[..n], &mut out)
            .map_err(|e| CudaError::Collective(e.to_string()))?;
        Ok(out)
    }
}
