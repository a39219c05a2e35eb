//! The engine's CUDA ranks: a `tessera_model::worker::RankLoader` whose ranks each own one GPU
//! (a process's i-th rank on device `first_device + i`), load their shard there, and meet
//! in NCCL (`ncclCommInitRank` with the group's unique id, also across processes).
//!
//! The coordinator, scheduler and server above do not change: a step's logits rows come
//! back to the host as on CPU, or, for a step whose rows are all plain (greedy, or
//! temperature, top-k and top-p only), only the ids chosen on the device. NCCL's all-reduce sums in its own order, so unlike the CPU path's ordered reduction,
//! output at several ranks may differ from one rank in the last bits (see README,
//! "GPU (CUDA)").

use std::ops::Range;

use cudarc::driver::CudaContext;
use tessera_comm::CommStats;
use tessera_model::worker::{RankLoader, RankSetup, RankStarter, RankWorker};
use tessera_model::{ModelError, PlanNeeds, RowChoice, StepSeq, WeightFiles};

use crate::backend::plan_support;
use crate::cache::{CudaKvCache, KvDtype};
use crate::collective::{DeviceComm, SingleGpu};
use crate::device::{driver_present, Gpu, GpuOptions};
use crate::error::CudaError;
use crate::model::CudaRankModel;
use crate::nccl::NcclCommunicator;
use crate::ops::DeviceDtype;

impl From<CudaError> for ModelError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::Model(m) => m,
            other => ModelError::Device {
                backend: "cuda",
                message: other.to_string(),
            },
        }
    }
}

/// Makes CUDA ranks for the engine.
#[derive(Clone, Debug)]
pub struct CudaLoader {
    /// Library folders and kernel cache.
    pub options: GpuOptions,
    /// Weight storage on the device.
    pub dtype: DeviceDtype,
    /// Device ordinal of rank 0.
    pub first_device: usize,
    /// Element type of the KV pool when the engine's `--kv-dtype` names none (`None`:
    /// [`CudaRankModel::preferred_kv`]; bf16 needs even GQA groups, and a plan without
    /// them is refused at the first step).
    pub kv: Option<KvDtype>,
}

impl RankLoader for CudaLoader {
    fn device(&self) -> &'static str {
        "cuda"
    }

    fn group_token(&self, world: usize) -> Result<Vec<u8>, ModelError> {
        if world <= 1 {
            return Ok(Vec::new());
        }
        if !driver_present() {
            return Err(CudaError::NoDriver.into());
        }
        Ok(NcclCommunicator::unique_id(&self.options.lib_dirs)?.to_vec())
    }

    fn starters(
        &self,
        world: usize,
        ranks: Range<usize>,
        token: &[u8],
    ) -> Result<Vec<Box<dyn RankStarter>>, ModelError> {
        if !driver_present() {
            return Err(CudaError::NoDriver.into());
        }
        let count = CudaContext::device_count().map_err(CudaError::from)?.max(0) as usize;
        let local = ranks.len();
        if self.first_device + local > count {
            return Err(ModelError::Device {
                backend: "cuda",
                message: format!(
                    "{local} ranks of this process need GPUs {}..{} but {count} GPU(s) are visible",
                    self.first_device,
                    self.first_device + local
                ),
            });
        }
        // Every rank joins the group with the same id, each on its own thread.
        let id = if world > 1 {
            let id: [u8; 128] = token.try_into().map_err(|_| ModelError::Device {
                backend: "cuda",
                message: format!("an NCCL id has 128 bytes, not {}", token.len()),
            })?;
            Some(id)
        } else {
            None
        };
        let first = ranks.start;
        Ok(ranks
            .map(|rank| {
                Box::new(CudaStarter {
                    loader: self.clone(),
                    ordinal: self.first_device + rank - first,
                    world,
                    id,
                }) as Box<dyn RankStarter>
            })
            .collect())
    }
}

struct CudaStarter {
    loader: CudaLoader,
    ordinal: usize,
    world: usize,
    id: Option<[u8; 128]>,
}

impl RankStarter for CudaStarter {
    fn start(self: Box<Self>, setup: &RankSetup) -> Result<Box<dyn RankWorker>, ModelError> {
        // Refused before any GPU work, so no rank waits on another in NCCL's init.
        plan_support(&PlanNeeds {
            reduce: setup.reduce,
            sequence_parallel: setup.plan.sequence_parallel,
            world: self.world,
        })?;
        let gpu = Gpu::new(self.ordinal, &self.loader.options)?;
        // The group is made before the weights load, so a rank that cannot open its GPU
        // fails before the others wait on it in NCCL's init.
        let comm: Box<dyn DeviceComm> = match self.id {
            None => Box::new(SingleGpu),
            Some(id) => Box::new(NcclCommunicator::init_rank(
                &gpu,
                setup.rank,
                self.world,
                id,
                &self.loader.options.lib_dirs,
            )?),
        };
        let files = WeightFiles::open(&setup.dir)?;
        let model = CudaRankModel::load(
            gpu,
            &setup.config,
            &files,
            &setup.plan,
            setup.rank,
            self.loader.dtype,
            setup.reduce,
        )?;
        let kv = setup
            .kv_dtype
            .or(self.loader.kv)
            .unwrap_or_else(|| model.preferred_kv());
        let cache = CudaKvCache::new(
            model.gpu(),
            &model.kv_widths(),
            setup.num_blocks,
            setup.block_size,
            kv,
        )?;
        Ok(Box::new(CudaWorker {
            model,
            cache,
            comm,
            rank: setup.rank,
        }))
    }
}

struct CudaWorker {
    model: CudaRankModel,
    cache: CudaKvCache,
    comm: Box<dyn DeviceComm>,
    rank: usize,
}

impl RankWorker for CudaWorker {
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    fn step(&mut self, seqs: &[StepSeq]) -> Result<(Vec<f32>, CommStats), ModelError> {
        let rows = self
            .model
            .forward(self.comm.as_mut(), &mut self.cache, seqs)?;
        // Only rank 0's rows are used; the others just finish their step.
        let logits = if self.rank == 0 {
            self.model.logits(rows)?
        } else {
            self.model.gpu().synchronize()?;
            Vec::new()
        };
        Ok((logits, self.comm.stats()))
    }

    fn step_choose(
        &mut self,
        seqs: &[StepSeq],
        _vocab: usize,
        choices: &[RowChoice],
    ) -> Result<(Vec<u32>, CommStats), ModelError> {
        let rows = self
            .model
            .forward(self.comm.as_mut(), &mut self.cache, seqs)?;
        if self.rank != 0 {
            self.model.gpu().synchronize()?;
            return Ok((Vec::new(), self.comm.stats()));
        }
        // Only the ids cross to the host. The kernel follows `tessera_model::RowChooser`:
        // greedy skips NaN and takes the lowest id among the largest, as `greedy_token`
        // does; a row without a number (-1) gives token 0 there too.
        let tokens = self
            .model
            .choose(rows, choices)?
            .into_iter()
            .map(|i| u32::try_from(i).unwrap_or(0))
            .collect();
        Ok((tokens, self.comm.stats()))
    }
}
