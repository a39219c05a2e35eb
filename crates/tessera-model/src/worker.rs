//! What a rank thread runs: a [`RankLoader`] prepares the ranks of one engine (their
//! communicators), and each rank's [`RankStarter`] loads its shard on the rank's own
//! thread into a [`RankWorker`] that runs batched steps.
//!
//! [`CpuLoader`] is Tessera's CPU path (shared-memory communicator, CPU kernels); a device
//! backend (the `tessera-cuda` crate) supplies its own loader, so the coordinator, the
//! scheduler and the server above it do not change with the device. These types live
//! beside the model, below the engine, so a device backend needs no engine to supply one.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::WeightDtype;
use crate::choice::{RowChoice, RowChooser};
use crate::config::ModelConfig;
use crate::cpu::CpuBackend;
use crate::error::ModelError;
use crate::paged::{KvDtype, PagedKvCache};
use crate::rank::RankModel;
use crate::step_seq::StepSeq;
use crate::weights::WeightFiles;
use tessera_comm::{CommError, CommStats, Communicator, SingleRank, ThreadGroup};
use tessera_kernels::Isa;
use tessera_plan::{ReduceMode, ShardPlan};

/// Everything one rank needs to load its shard.
#[derive(Clone, Debug)]
pub struct RankSetup {
    /// This rank's index.
    pub rank: usize,
    /// The model directory.
    pub dir: PathBuf,
    /// The model's config.
    pub config: ModelConfig,
    /// The plan every rank runs.
    pub plan: Arc<ShardPlan>,
    /// Weight storage precision asked for.
    pub dtype: WeightDtype,
    /// How row-parallel partial sums are combined.
    pub reduce: ReduceMode,
    /// CPU threads this rank may use.
    pub threads: usize,
    /// Blocks of its KV cache (the same ids on every rank).
    pub num_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV-cache storage asked for (`None`: the backend's choice; f32 on CPU).
    pub kv_dtype: Option<KvDtype>,
}

/// One loaded rank: its shard, KV cache and communicator.
pub trait RankWorker {
    /// Bytes of weights it holds.
    fn weight_bytes(&self) -> usize;
    /// Runs one batched step; rank 0 returns the full-vocabulary logits rows the
    /// sequences ask for (other ranks may return them too), with its collective counters.
    fn step(&mut self, seqs: &[StepSeq]) -> Result<(Vec<f32>, CommStats), ModelError>;
    /// Like [`RankWorker::step`], with logits row i (of `vocab`) replaced by the token
    /// `choices[i]` picks ([`crate::RowChooser`]), so only ids leave the rank: a device
    /// backend picks them where the logits are. A rank that returns no logits (not rank 0)
    /// returns no tokens.
    fn step_choose(
        &mut self,
        seqs: &[StepSeq],
        vocab: usize,
        choices: &[RowChoice],
    ) -> Result<(Vec<u32>, CommStats), ModelError> {
        let (logits, stats) = self.step(seqs)?;
        let tokens = choose_rows(&logits, vocab, choices, &mut RowChooser::default())?;
        Ok((tokens, stats))
    }
}

/// The token `choices[i]` picks from row i (of `vocab`) of `logits`; no rows, no tokens.
fn choose_rows(
    logits: &[f32],
    vocab: usize,
    choices: &[RowChoice],
    chooser: &mut RowChooser,
) -> Result<Vec<u32>, ModelError> {
    let rows = logits.len() / vocab.max(1);
    if !logits.is_empty() && rows != choices.len() {
        return Err(ModelError::BadBatch(format!(
            "{rows} logits rows but {} token choices",
            choices.len()
        )));
    }
    Ok(logits
        .chunks_exact(vocab.max(1))
        .zip(choices)
        .map(|(row, choice)| chooser.choose(row, choice))
        .collect())
}

/// Loads one rank on the thread that will run it (device contexts are per thread).
pub trait RankStarter: Send {
    /// Loads the shard `setup` describes.
    fn start(self: Box<Self>, setup: &RankSetup) -> Result<Box<dyn RankWorker>, ModelError>;
}

/// Prepares the ranks of one engine on some kind of device.
pub trait RankLoader: Send + Sync {
    /// The device kind, for logs ("cpu", "cuda").
    fn device(&self) -> &'static str;
    /// What every rank of a group of `world` needs to join it, made once by the first
    /// node (NCCL's unique id; nothing for the CPU).
    fn group_token(&self, _world: usize) -> Result<Vec<u8>, ModelError> {
        Ok(Vec::new())
    }
    /// Starters of ranks `ranks` (global indices, in order) of a group of `world` whose
    /// token is `token`; the other ranks run in other processes.
    fn starters(
        &self,
        world: usize,
        ranks: Range<usize>,
        token: &[u8],
    ) -> Result<Vec<Box<dyn RankStarter>>, ModelError>;
    /// Makes all `world` starters, rank order, in this process.
    fn prepare(&self, world: usize) -> Result<Vec<Box<dyn RankStarter>>, ModelError> {
        let token = self.group_token(world)?;
        self.starters(world, 0..world, &token)
    }
}

/// Tessera's CPU ranks: threads with a shared-memory communicator.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuLoader {
    /// Kernel instruction set to force (`None`: the fastest this CPU has).
    pub isa: Option<Isa>,
}

impl RankLoader for CpuLoader {
    fn device(&self) -> &'static str {
        "cpu"
    }

    fn starters(
        &self,
        world: usize,
        ranks: Range<usize>,
        _token: &[u8],
    ) -> Result<Vec<Box<dyn RankStarter>>, ModelError> {
        let comms: Vec<Box<dyn Communicator>> = if world == 1 {
            vec![Box::new(SingleRank::new())]
        } else if ranks == (0..world) {
            ThreadGroup::create(world)
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator>)
                .collect()
        } else {
            // The shared-memory communicator does not reach other processes: these ranks
            // can only run plans without collectives (checked before start).
            ranks
                .map(|rank| Box::new(Detached { rank, world }) as Box<dyn Communicator>)
                .collect()
        };
        Ok(comms
            .into_iter()
            .map(|comm| {
                Box::new(CpuStarter {
                    comm,
                    isa: self.isa,
                }) as Box<dyn RankStarter>
            })
            .collect())
    }
}

struct CpuStarter {
    comm: Box<dyn Communicator>,
    isa: Option<Isa>,
}

impl RankStarter for CpuStarter {
    fn start(self: Box<Self>, setup: &RankSetup) -> Result<Box<dyn RankWorker>, ModelError> {
        let backend = CpuBackend::with_isa(setup.threads, self.isa)?;
        let files = WeightFiles::open(&setup.dir)?;
        let model = RankModel::load_on(
            &backend,
            &setup.config,
            &files,
            &setup.plan,
            setup.rank,
            setup.dtype,
            setup.reduce,
        )?;
        let cache = PagedKvCache::with_dtype(
            model.kv_widths(),
            setup.num_blocks,
            setup.block_size,
            setup.kv_dtype.unwrap_or(KvDtype::F32),
        );
        Ok(Box::new(CpuWorker {
            model,
            backend,
            cache,
            comm: self.comm,
            chooser: RowChooser::default(),
        }))
    }
}

struct CpuWorker {
    model: RankModel,
    backend: CpuBackend,
    cache: PagedKvCache,
    comm: Box<dyn Communicator>,
    /// Scratch of the sampled rows' choice, kept between steps.
    chooser: RowChooser,
}

impl RankWorker for CpuWorker {
    fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    fn step(&mut self, seqs: &[StepSeq]) -> Result<(Vec<f32>, CommStats), ModelError> {
        let logits =
            self.model
                .forward_batch(&self.backend, self.comm.as_mut(), &mut self.cache, seqs)?;
        Ok((logits, self.comm.stats()))
    }

    /// Picks each row's token from the logits in the model's workspace: a step that
    /// returns ids allocates nothing of vocabulary size.
    fn step_choose(
        &mut self,
        seqs: &[StepSeq],
        vocab: usize,
        choices: &[RowChoice],
    ) -> Result<(Vec<u32>, CommStats), ModelError> {
        let (model, backend) = (&self.model, &self.backend);
        let Some(step) = model.prepare_step(backend, &self.cache, seqs)? else {
            return Ok((Vec::new(), self.comm.stats()));
        };
        model.run_step(backend, self.comm.as_mut(), &mut self.cache, seqs, &step)?;
        let len = step.logit_rows() * model.logit_width();
        let chooser = &mut self.chooser;
        let tokens =
            model.with_logits(|buf| choose_rows(&buf[..len], vocab, choices, chooser))??;
        Ok((tokens, self.comm.stats()))
    }
}

/// The communicator of a CPU rank whose group spans processes: shared memory does not
/// reach the others, so every collective is an error (plans without collectives run).
struct Detached {
    rank: usize,
    world: usize,
}

impl Detached {
    fn refuse(&self) -> CommError {
        CommError::Backend(format!(
            "rank {} of {}: CPU ranks in several processes have no communicator; only a plan without collectives (replicated) runs across nodes on CPU",
            self.rank, self.world
        ))
    }
}

impl Communicator for Detached {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<(), CommError> {
        Err(self.refuse())
    }

    fn reduce_scatter_ordered(
        &mut self,
        _partials: &[f32],
        _len: usize,
        _keep: Range<usize>,
        _out: &mut [f32],
    ) -> Result<(), CommError> {
        Err(self.refuse())
    }

    fn all_gather(&mut self, _local: &[f32], _out: &mut [f32]) -> Result<(), CommError> {
        Err(self.refuse())
    }

    fn broadcast(&mut self, _buf: &mut [f32], _root: usize) -> Result<(), CommError> {
        Err(self.refuse())
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        Err(self.refuse())
    }

    fn stats(&self) -> CommStats {
        CommStats::default()
    }

    fn reset_stats(&mut self) {}
}
