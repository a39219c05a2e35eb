//! The coordinator: spawns one thread per rank, loads each rank's shard in parallel, and
//! runs forward passes on all ranks in lockstep.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use tessera_comm::CommStats;
use tessera_model::worker::{CpuLoader, RankLoader, RankSetup, RankStarter};
use tessera_model::{
    KvDtype, LogitRows, ModelConfig, ModelError, PagedKvCache, RowChoice, StepSeq, WeightDtype,
};
use tessera_plan::{ReduceMode, ShardPlan};

/// Why the engine could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A rank thread died (panicked or its channel closed); the engine must be restarted.
    #[error("rank {0} stopped unexpectedly; the engine must be restarted")]
    RankLost(usize),
    /// The plan was made for another rank count or model.
    #[error(transparent)]
    Plan(#[from] tessera_plan::PlanError),
    /// A request is invalid before it reaches the ranks (the caller's fault).
    #[error("{0}")]
    BadRequest(String),
    /// The engine's configuration cannot work (fix the settings and restart).
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// The engine broke one of its own rules (a bug, not the request's fault).
    #[error("internal engine error: {0}")]
    Internal(String),
    /// The engine thread has stopped; no request can be served until it is restarted.
    #[error("the engine has stopped")]
    Stopped,
}

/// How to start the ranks.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Weight storage precision.
    pub dtype: WeightDtype,
    /// Total CPU threads to share among ranks (default: all cores).
    pub threads: Option<usize>,
    /// KV-cache memory per rank in bytes; the block count follows from it.
    pub kv_cache_bytes: usize,
    /// Tokens per KV-cache block.
    pub block_size: usize,
    /// How row-parallel partial sums are combined (deterministic unless `--fast-reduce`).
    pub reduce: ReduceMode,
    /// KV-cache storage (`None`: the backend's choice, f32 on CPU); the block count that
    /// fits `kv_cache_bytes` follows from it.
    pub kv_dtype: Option<KvDtype>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            dtype: WeightDtype::F32,
            threads: None,
            kv_cache_bytes: 256 << 20,
            block_size: 16,
            reduce: ReduceMode::Deterministic,
            kv_dtype: None,
        }
    }
}

enum Command {
    Step(Arc<Vec<StepSeq>>, Want),
}

/// What rank 0 returns of a step.
#[derive(Clone, Debug, PartialEq)]
enum Want {
    /// Full-vocabulary logits rows.
    Logits,
    /// The token each row's choice picks (one choice per logits row).
    Choose(Arc<[RowChoice]>),
}

/// A step's result from one rank.
enum Got {
    Logits(Vec<f32>),
    Tokens(Vec<u32>),
}

struct RankHandle {
    tx: Sender<Command>,
    rx: Receiver<Result<(Got, CommStats), ModelError>>,
    join: Option<JoinHandle<()>>,
}

/// Owner of the rank threads of one model.
pub struct Coordinator {
    ranks: Vec<RankHandle>,
    config: ModelConfig,
    plan: ShardPlan,
    model_dir: PathBuf,
    num_blocks: usize,
    block_size: usize,
    /// Each rank's collective traffic and time since start, as of the last step.
    comm_stats: Vec<CommStats>,
    /// Tokens of the single-sequence mode ([`Coordinator::forward`]) in blocks 0, 1, ...
    cached: usize,
    failed: bool,
}

impl Coordinator {
    /// Loads `model_dir` split as `plan` says and starts one CPU thread per rank.
    pub fn start(
        model_dir: &Path,
        plan: ShardPlan,
        options: &EngineOptions,
    ) -> Result<Self, EngineError> {
        Self::start_on(model_dir, plan, options, &CpuLoader::default())
    }

    /// Like [`Coordinator::start`], with the ranks `loader` makes (a device backend).
    pub fn start_on(
        model_dir: &Path,
        plan: ShardPlan,
        options: &EngineOptions,
        loader: &dyn RankLoader,
    ) -> Result<Self, EngineError> {
        let config = ModelConfig::from_dir(model_dir)?;
        check_plan(&config, &plan, options)?;
        let world = plan.world_size;
        let threads_per_rank = threads_per_rank(options.threads, world);
        tracing::info!(
            world,
            threads_per_rank,
            device = loader.device(),
            strategy = %plan.strategy,
            reduce = options.reduce.name(),
            "starting ranks"
        );
        let num_blocks = fit_blocks(&config, &plan, options)?;
        let kv_dtype = options.kv_dtype.map_or("backend default", KvDtype::name);
        tracing::info!(
            num_blocks,
            block_size = options.block_size,
            kv_dtype,
            "KV cache"
        );
        let plan_arc = Arc::new(plan.clone());
        let starters = loader.prepare(world)?;
        if starters.len() != world {
            return Err(EngineError::Internal(format!(
                "the {} loader prepared {} ranks for a plan of {world}",
                loader.device(),
                starters.len()
            )));
        }
        let mut ranks = Vec::with_capacity(world);
        // One channel for every rank's load result: the first failure ends the start even
        // while other ranks still wait in a collective set-up (NCCL's init blocks until
        // every rank arrives).
        let (ready_tx, ready_rx) = channel::<(usize, Result<usize, ModelError>)>();
        for (rank, starter) in starters.into_iter().enumerate() {
            let (cmd_tx, cmd_rx) = channel::<Command>();
            let (res_tx, res_rx) = channel();
            let ready_tx = ready_tx.clone();
            let setup = RankSetup {
                rank,
                dir: model_dir.to_path_buf(),
                config: config.clone(),
                plan: Arc::clone(&plan_arc),
                dtype: options.dtype,
                reduce: options.reduce,
                threads: threads_per_rank,
                num_blocks,
                block_size: options.block_size,
                kv_dtype: options.kv_dtype,
            };
            let join = std::thread::Builder::new()
                .name(format!("tessera-rank-{rank}"))
                .spawn(move || {
                    let rank = setup.rank;
                    rank_main(setup, starter, cmd_rx, res_tx, |r| {
                        let _ = ready_tx.send((rank, r));
                    })
                })
                .map_err(|e| ModelError::io(model_dir, e))?;
            ranks.push(RankHandle {
                tx: cmd_tx,
                rx: res_rx,
                join: Some(join),
            });
        }
        drop(ready_tx);
        wait_loaded(&ready_rx, world)?;
        Ok(Self {
            ranks,
            config,
            plan,
            model_dir: model_dir.to_path_buf(),
            num_blocks,
            block_size: options.block_size,
            comm_stats: vec![CommStats::default(); world],
            cached: 0,
            failed: false,
        })
    }

    /// Blocks in every rank's KV cache.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Tokens per KV-cache block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Each rank's collective calls, bytes moved and time inside collectives since start.
    pub fn comm_stats(&self) -> &[CommStats] {
        &self.comm_stats
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The plan the ranks run.
    pub fn plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// The model directory.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// Tokens in the ranks' KV caches.
    pub fn cached_tokens(&self) -> usize {
        self.cached
    }

    /// Starts a new sequence in single-sequence mode (see [`Coordinator::forward`]).
    pub fn reset(&mut self) -> Result<(), EngineError> {
        self.cached = 0;
        Ok(())
    }

    /// Single-sequence mode: appends `tokens` to the one sequence held in blocks `0, 1, ...`
    /// and returns full-vocabulary logits (`rows` says which). Not to be mixed with
    /// [`Coordinator::step`] on the same coordinator, whose block manager owns the blocks.
    pub fn forward(&mut self, tokens: &[u32], rows: LogitRows) -> Result<Vec<f32>, EngineError> {
        let total = self.cached + tokens.len();
        if total > self.config.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                tokens: total,
                context: self.config.max_position_embeddings,
            }
            .into());
        }
        let blocks = total.div_ceil(self.block_size);
        if blocks > self.num_blocks {
            return Err(EngineError::BadRequest(format!(
                "{total} tokens need {blocks} KV blocks but the cache holds {}",
                self.num_blocks
            )));
        }
        let seq = StepSeq {
            id: 0,
            tokens: tokens.to_vec(),
            start: self.cached,
            block_table: (0..blocks as u32).collect(),
            logits: rows,
        };
        let out = self.step(vec![seq])?;
        self.cached = total;
        Ok(out)
    }

    /// Runs one batched step on every rank and returns the logits rows the sequences ask
    /// for, in order. Inputs are checked here so that no rank fails alone.
    pub fn step(&mut self, seqs: Vec<StepSeq>) -> Result<Vec<f32>, EngineError> {
        match self.run_step(seqs, Want::Logits)? {
            Got::Logits(l) => Ok(l),
            Got::Tokens(_) => Err(EngineError::Internal(
                "rank 0 returned token ids for a logits step".into(),
            )),
        }
    }

    /// Like [`Coordinator::step`], returning the token `choices[i]` picks from logits row i
    /// (`tessera_model::RowChooser`'s rule: greedy, or temperature, top-k and top-p with
    /// the row's uniform) instead of the row: a device rank picks it where the logits are,
    /// and only ids reach the host.
    pub fn step_choose(
        &mut self,
        seqs: Vec<StepSeq>,
        choices: Vec<RowChoice>,
    ) -> Result<Vec<u32>, EngineError> {
        let rows: usize = seqs.iter().map(|s| s.logits.count(s.tokens.len())).sum();
        if rows != choices.len() {
            return Err(EngineError::Internal(format!(
                "a step of {rows} logits rows was given {} token choices",
                choices.len()
            )));
        }
        match self.run_step(seqs, Want::Choose(choices.into()))? {
            Got::Tokens(t) => Ok(t),
            Got::Logits(_) => Err(EngineError::Internal(
                "rank 0 returned logits for a choose step".into(),
            )),
        }
    }

    fn run_step(&mut self, seqs: Vec<StepSeq>, want: Want) -> Result<Got, EngineError> {
        if self.failed {
            return Err(EngineError::RankLost(0));
        }
        let shape = &self.config.shape;
        for s in &seqs {
            tessera_model::check_tokens(&s.tokens, shape.vocab)?;
            let end = s.start + s.tokens.len();
            if end > self.config.max_position_embeddings {
                return Err(ModelError::ContextOverflow {
                    tokens: end,
                    context: self.config.max_position_embeddings,
                }
                .into());
            }
            if s.block_table.len() * self.block_size < end
                || s.block_table.iter().any(|&b| b as usize >= self.num_blocks)
            {
                return Err(EngineError::Internal(format!(
                    "block table {:?} cannot hold {end} positions in a pool of {} blocks",
                    s.block_table, self.num_blocks
                )));
            }
        }
        let seqs = Arc::new(seqs);
        for (rank, r) in self.ranks.iter().enumerate() {
            if r.tx
                .send(Command::Step(Arc::clone(&seqs), want.clone()))
                .is_err()
            {
                self.failed = true;
                return Err(EngineError::RankLost(rank));
            }
        }
        let mut first = None;
        let mut error = None;
        for (rank, r) in self.ranks.iter().enumerate() {
            match r.rx.recv() {
                Ok(Ok((got, stats))) => {
                    self.comm_stats[rank] = stats;
                    if rank == 0 {
                        first = Some(got);
                    }
                }
                Ok(Err(e)) => {
                    error.get_or_insert(EngineError::Model(e));
                }
                Err(_) => {
                    error.get_or_insert(EngineError::RankLost(rank));
                }
            }
        }
        if let Some(e) = error {
            self.failed = true;
            return Err(e);
        }
        first.ok_or(EngineError::RankLost(0))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        for r in &mut self.ranks {
            // Closing the command channel ends the rank loop.
            let (tx, _) = channel();
            drop(std::mem::replace(&mut r.tx, tx));
        }
        for r in &mut self.ranks {
            if let Some(j) = r.join.take() {
                let _ = j.join();
            }
        }
    }
}

/// CPU threads for each of `ranks` ranks of this process: `threads` (default: every core)
/// shared evenly, at least one each.
pub(crate) fn threads_per_rank(threads: Option<usize>, ranks: usize) -> usize {
    let cores =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (cores / ranks.max(1)).max(1)
}

/// Checks that `plan` is valid, made for `config`'s shape and, when the sums must be
/// deterministic, splits nothing that would reorder them.
fn check_plan(
    config: &ModelConfig,
    plan: &ShardPlan,
    options: &EngineOptions,
) -> Result<(), EngineError> {
    if plan.model != config.shape {
        return Err(tessera_plan::PlanError::ModelMismatch {
            plan: format!("{:?}", plan.model),
            model: format!("{:?}", config.shape),
        }
        .into());
    }
    plan.validate()?;
    if options.reduce == ReduceMode::Deterministic {
        plan.check_deterministic()?;
    }
    Ok(())
}

/// How many KV blocks every rank holds within `options.kv_cache_bytes`.
fn fit_blocks(
    config: &ModelConfig,
    plan: &ShardPlan,
    options: &EngineOptions,
) -> Result<usize, EngineError> {
    if options.block_size == 0 {
        return Err(EngineError::Config(
            "the KV block size must be at least 1".into(),
        ));
    }
    // Every rank holds the same block ids; the rank with the widest key/value slice
    // (replicated kv heads) decides how many blocks fit the budget.
    let widest = (0..plan.world_size)
        .map(|rank| {
            let widths: Vec<usize> = (0..config.shape.layers)
                .map(|l| plan.heads(l, rank).kv_heads.len() * config.shape.head_dim)
                .collect();
            let dtype = options.kv_dtype.unwrap_or(KvDtype::F32);
            PagedKvCache::block_bytes(&widths, options.block_size, dtype)
        })
        .max()
        .unwrap_or(0)
        .max(1);
    // No more blocks than 256 sequences of full context could use (tiny models).
    let useful = 256 * config.max_position_embeddings.div_ceil(options.block_size);
    let num_blocks = (options.kv_cache_bytes / widest).min(useful);
    if num_blocks == 0 {
        return Err(EngineError::Config(format!(
            "a KV cache of {} bytes per rank holds no block of {widest} bytes",
            options.kv_cache_bytes
        )));
    }
    Ok(num_blocks)
}

/// Waits until each of `world` ranks reports its load; the first failure ends the wait.
fn wait_loaded(
    ready: &Receiver<(usize, Result<usize, ModelError>)>,
    world: usize,
) -> Result<(), EngineError> {
    for _ in 0..world {
        match ready.recv() {
            Ok((rank, Ok(bytes))) => {
                tracing::info!(rank, mib = bytes / (1 << 20), "rank loaded");
            }
            Ok((_, Err(e))) => return Err(e.into()),
            // Every sender is gone with a rank still unreported: a rank thread died.
            Err(_) => return Err(EngineError::RankLost(0)),
        }
    }
    Ok(())
}

fn rank_main(
    setup: RankSetup,
    starter: Box<dyn RankStarter>,
    commands: Receiver<Command>,
    results: Sender<Result<(Got, CommStats), ModelError>>,
    ready: impl FnOnce(Result<usize, ModelError>),
) {
    let mut worker = match starter.start(&setup) {
        Ok(w) => w,
        Err(e) => {
            ready(Err(e));
            return;
        }
    };
    ready(Ok(worker.weight_bytes()));
    let vocab = setup.config.shape.vocab;
    while let Ok(Command::Step(seqs, want)) = commands.recv() {
        let out = match want {
            Want::Logits => worker.step(&seqs).map(|(l, s)| (Got::Logits(l), s)),
            Want::Choose(choices) => worker
                .step_choose(&seqs, vocab, &choices)
                .map(|(t, s)| (Got::Tokens(t), s)),
        };
        let failed = out.is_err();
        if results.send(out).is_err() || failed {
            return;
        }
    }
}
