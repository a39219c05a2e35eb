//! One rank's shard of a Llama-family model on a GPU: the shared forward pass
//! (`tessera_model::RankModel`, the same layer loop, loader and collective sites as the
//! CPU's) over [`CudaBackend`], with two things wrapped around it from outside:
//!
//! - a decode step (one new token per sequence) is padded to a power of two of rows with
//!   rows of the trash block, prepared (host-to-device copies), then run eagerly once and
//!   captured as a CUDA graph that later steps of the same shape replay;
//! - tokens are chosen on the device from the logits the step left there, so only ids
//!   reach the host.
//!
//! ```text
//!   seqs ─pad─> prepare_step ──> [ run_step ]  eager, or graph replay of the same kernels
//!                                      │
//!                     logits (device) ─┴─> choose (argmax / top-k / top-p) ─> ids
//! ```

use std::collections::HashMap;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use tessera_model::{
    LogitRows, ModelConfig, RankModel, RowChoice, StepRows, StepSeq, WeightDtype, WeightFiles,
};
use tessera_plan::{ReduceMode, ShardPlan};

use crate::backend::CudaBackend;
use crate::cache::{CudaKvCache, KvDtype};
use crate::collective::DeviceComm;
use crate::device::Gpu;
use crate::device_step::StepKey;
use crate::error::CudaError;
use crate::ops::{DeviceDtype, RowSampler};

/// Most rows of a decode step run as a CUDA graph (larger steps run eagerly).
pub const MAX_GRAPH_ROWS: usize = 256;

/// The padded row count of a decode graph for `rows` rows: the next power of two.
pub fn graph_rows(rows: usize) -> usize {
    rows.max(1).next_power_of_two()
}

/// Captured decode steps and what they are valid for.
struct Graphs {
    /// By step shape: the graph, and the collective calls and bytes each replay makes.
    map: HashMap<StepKey, (CudaGraph, u64, u64)>,
    /// (backend allocations, pool digest) the graphs were captured with.
    state: (u64, u64),
    on: bool,
    replays: u64,
}

/// One rank's shard of the model on one GPU.
pub struct CudaRankModel {
    backend: CudaBackend,
    model: RankModel<CudaBackend>,
    graphs: Graphs,
    sampler: RowSampler,
}

impl CudaRankModel {
    /// Loads `rank`'s shard of `files` as `plan` assigns it onto `gpu`, weights stored as
    /// `dtype`, row-parallel sums combined as `reduce` says (refused at load where CUDA
    /// cannot, see [`crate::backend::plan_support`]).
    pub fn load(
        gpu: Gpu,
        config: &ModelConfig,
        files: &WeightFiles,
        plan: &ShardPlan,
        rank: usize,
        dtype: DeviceDtype,
        reduce: ReduceMode,
    ) -> Result<Self, CudaError> {
        let backend = CudaBackend::new(gpu, dtype, &config.shape)?;
        let loader_dtype = match dtype {
            DeviceDtype::F32 => WeightDtype::F32,
            DeviceDtype::Bf16 | DeviceDtype::F16 => WeightDtype::Bf16,
        };
        let model = RankModel::load_on(&backend, config, files, plan, rank, loader_dtype, reduce)?;
        let sampler = RowSampler::new(backend.gpu())?;
        backend.gpu().synchronize()?;
        Ok(Self {
            backend,
            model,
            graphs: Graphs {
                map: HashMap::new(),
                state: (0, 0),
                on: true,
                replays: 0,
            },
            sampler,
        })
    }

    /// The GPU the shard lives on.
    pub fn gpu(&self) -> &Gpu {
        self.backend.gpu()
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// Key/value width of each layer on this rank.
    pub fn kv_widths(&self) -> Vec<usize> {
        self.model.kv_widths()
    }

    /// The pool this shard runs best on: bf16 (grouped decode kernel, half the bytes)
    /// under half-precision weights whose GQA groups are even; f32 otherwise (f32
    /// weights keep the f32 pool, so checks against the CPU stay tight).
    pub fn preferred_kv(&self) -> KvDtype {
        if self.backend.dtype() != DeviceDtype::F32 && self.backend.even_groups() {
            KvDtype::Bf16
        } else {
            KvDtype::F32
        }
    }

    /// A pool of `num_blocks` blocks of `block_size` tokens in [`Self::preferred_kv`].
    pub fn new_cache(
        &self,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<CudaKvCache, CudaError> {
        let dtype = self.preferred_kv();
        CudaKvCache::new(self.gpu(), &self.kv_widths(), num_blocks, block_size, dtype)
    }

    /// Whether decode steps run as CUDA graphs (on by default).
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs.on = on;
        if !on {
            self.graphs.map.clear();
        }
    }

    /// Graphs captured so far (one per padded batch size and split shape) and the steps
    /// that replayed one.
    pub fn graph_stats(&self) -> (usize, u64) {
        (self.graphs.map.len(), self.graphs.replays)
    }

    /// Runs a batch of sequences' new tokens (see `tessera_model::StepSeq`), writing their
    /// keys and values into `cache`; returns how many rows of logits the sequences asked
    /// for. The rows stay on the device for [`Self::logits`] and [`Self::choose`] until
    /// the next step.
    pub fn forward(
        &mut self,
        comm: &mut (dyn DeviceComm + 'static),
        cache: &mut CudaKvCache,
        seqs: &[StepSeq],
    ) -> Result<usize, CudaError> {
        let t: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let decode = !seqs.is_empty()
            && seqs
                .iter()
                .all(|s| s.tokens.len() == 1 && s.logits != LogitRows::None);
        // Whether to pad depends only on what every rank shares (the batch and the kind
        // of communicator), never on this rank's graph state: all ranks must issue
        // collectives of the same sizes.
        let pad = comm.capturable() && decode && t <= MAX_GRAPH_ROWS;
        let mut padded = seqs.to_vec();
        if pad {
            let filler = StepSeq {
                id: u64::MAX,
                tokens: vec![0],
                start: 0,
                block_table: vec![cache.trash_block()],
                logits: LogitRows::Last,
            };
            padded.resize(graph_rows(t), filler);
        }
        let Some(step) = self.model.prepare_step(&self.backend, cache, &padded)? else {
            return Ok(0);
        };
        if pad && self.graphs.on {
            self.graph_step(comm, cache, &padded, &step)?;
        } else {
            self.model
                .run_step(&self.backend, comm, cache, &padded, &step)?;
        }
        // The real sequences' rows come first; padded rows follow.
        Ok(tessera_model::logit_rows(seqs).len())
    }

    /// Replays the graph of this step's shape, or runs the step eagerly and captures it.
    fn graph_step(
        &mut self,
        comm: &mut (dyn DeviceComm + 'static),
        cache: &mut CudaKvCache,
        seqs: &[StepSeq],
        step: &StepRows,
    ) -> Result<(), CudaError> {
        let key = self.backend.last_step();
        self.check_graphs(cache);
        if let Some((g, calls, bytes)) = self.graphs.map.get(&key) {
            g.launch()?;
            comm.add_replayed(*calls, *bytes);
            self.graphs.replays += 1;
            return Ok(());
        }
        // This step runs eagerly (which also sizes every buffer and makes the GEMM plans
        // and NCCL's lazy set-up happen outside a capture); the next ones replay.
        self.model
            .run_step(&self.backend, comm, cache, seqs, step)?;
        self.check_graphs(cache);
        let before = comm.stats();
        let captured = self.capture(comm, cache, seqs, step);
        let after = comm.stats();
        match captured {
            Ok(g) if self.backend.allocations() == self.graphs.state.0 => {
                tracing::debug!(rows = key.rows, "captured a decode graph");
                let calls = after.calls.saturating_sub(before.calls);
                let bytes = after.bytes_moved.saturating_sub(before.bytes_moved);
                self.graphs.map.insert(key, (g, calls, bytes));
            }
            Ok(_) => tracing::warn!("a step buffer moved during a capture; graph dropped"),
            Err(e) => {
                tracing::warn!(error = %e, "CUDA graph capture failed; decode runs eagerly from now on");
                self.set_graphs(false);
            }
        }
        Ok(())
    }

    /// Drops the graphs when a buffer they use moved or the pool is another.
    fn check_graphs(&mut self, cache: &CudaKvCache) {
        let state = (self.backend.allocations(), cache.digest(self.gpu()));
        if state != self.graphs.state {
            self.graphs.map.clear();
            self.graphs.state = state;
        }
    }

    /// Captures [`RankModel::run_step`] for this shape as a graph (nothing runs).
    fn capture(
        &mut self,
        comm: &mut (dyn DeviceComm + 'static),
        cache: &mut CudaKvCache,
        seqs: &[StepSeq],
        step: &StepRows,
    ) -> Result<CudaGraph, CudaError> {
        let stream = self.gpu().stream().clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let ran = self.model.run_step(&self.backend, comm, cache, seqs, step);
        // The capture ends even when a call inside it failed, leaving the stream usable.
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        ran?;
        ended?.ok_or_else(|| CudaError::Shape {
            op: "graph",
            reason: "the capture recorded nothing".into(),
        })
    }

    /// The first `rows` rows of the last step's logits (full vocabulary), on the host.
    pub fn logits(&self, rows: usize) -> Result<Vec<f32>, CudaError> {
        let width = self.model.logit_width();
        let gpu = self.gpu();
        self.model
            .with_logits(|buf| gpu.download_prefix(buf, rows * width))?
    }

    /// One token per row of the last step's first `rows` logit rows, row i chosen as
    /// `choices[i]` says (`-1`: a row without a number); only the ids are downloaded.
    pub fn choose(&mut self, rows: usize, choices: &[RowChoice]) -> Result<Vec<i32>, CudaError> {
        let width = self.model.logit_width();
        let (model, sampler, gpu) = (&self.model, &mut self.sampler, self.backend.gpu());
        model.with_logits(|buf| sampler.pick(gpu, buf, rows, width, choices))?
    }

    /// The greedy token of each of the first `rows` logit rows (the lowest id among the
    /// largest logits; NaN never wins; -1 for a row without a number).
    pub fn greedy(&mut self, rows: usize) -> Result<Vec<i32>, CudaError> {
        self.choose(rows, &vec![RowChoice::GREEDY; rows])
    }
}
