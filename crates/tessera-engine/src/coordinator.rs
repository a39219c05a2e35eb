//! The coordinator: spawns one thread per rank, loads each rank's shard in parallel, and
//! runs forward passes on all ranks in lockstep.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use tessera_comm::{Communicator, SingleRank, ThreadGroup};
use tessera_model::{
    CpuBackend, KvCache, LogitRows, ModelConfig, ModelError, RankModel, WeightDtype, WeightFiles,
};
use tessera_plan::ShardPlan;

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
    /// A request is invalid before it reaches the ranks.
    #[error("{0}")]
    BadRequest(String),
}

/// How to start the ranks.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Weight storage precision.
    pub dtype: WeightDtype,
    /// Total CPU threads to share among ranks (default: all cores).
    pub threads: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            dtype: WeightDtype::F32,
            threads: None,
        }
    }
}

enum Command {
    Forward {
        tokens: Arc<Vec<u32>>,
        rows: LogitRows,
    },
    Reset,
}

struct RankHandle {
    tx: Sender<Command>,
    rx: Receiver<Result<Vec<f32>, ModelError>>,
    join: Option<JoinHandle<()>>,
}

/// Owner of the rank threads of one model.
pub struct Coordinator {
    ranks: Vec<RankHandle>,
    config: ModelConfig,
    plan: ShardPlan,
    model_dir: PathBuf,
    cached: usize,
    failed: bool,
}

impl Coordinator {
    /// Loads `model_dir` split as `plan` says and starts one thread per rank.
    pub fn start(model_dir: &Path, plan: ShardPlan, options: &EngineOptions) -> Result<Self, EngineError> {
        let config = ModelConfig::from_dir(model_dir)?;
        if plan.model != config.shape {
            return Err(tessera_plan::PlanError::ModelMismatch {
                plan: format!("{:?}", plan.model),
                model: format!("{:?}", config.shape),
            }
            .into());
        }
        plan.validate()?;
        let world = plan.world_size;
        let cores = options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let threads_per_rank = (cores / world).max(1);
        tracing::info!(world, threads_per_rank, strategy = %plan.strategy, "starting ranks");
        let comms: Vec<Box<dyn Communicator>> = if world == 1 {
            vec![Box::new(SingleRank::new())]
        } else {
            ThreadGroup::create(world)
                .into_iter()
                .map(|c| Box::new(c) as Box<dyn Communicator>)
                .collect()
        };
        let plan_arc = Arc::new(plan.clone());
        let mut ranks = Vec::with_capacity(world);
        let mut ready = Vec::with_capacity(world);
        for (rank, comm) in comms.into_iter().enumerate() {
            let (cmd_tx, cmd_rx) = channel::<Command>();
            let (res_tx, res_rx) = channel();
            let (ready_tx, ready_rx) = channel::<Result<usize, ModelError>>();
            let dir = model_dir.to_path_buf();
            let plan = Arc::clone(&plan_arc);
            let config = config.clone();
            let dtype = options.dtype;
            let join = std::thread::Builder::new()
                .name(format!("tessera-rank-{rank}"))
                .spawn(move || {
                    rank_main(rank, &dir, &config, &plan, dtype, threads_per_rank, comm, cmd_rx, res_tx, ready_tx)
                })
                .map_err(|e| ModelError::io(model_dir, e))?;
            ranks.push(RankHandle {
                tx: cmd_tx,
                rx: res_rx,
                join: Some(join),
            });
            ready.push(ready_rx);
        }
        for (rank, rx) in ready.into_iter().enumerate() {
            match rx.recv() {
                Ok(Ok(bytes)) => tracing::info!(rank, mib = bytes / (1 << 20), "rank loaded"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(EngineError::RankLost(rank)),
            }
        }
        Ok(Self {
            ranks,
            config,
            plan,
            model_dir: model_dir.to_path_buf(),
            cached: 0,
            failed: false,
        })
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

    /// Empties every rank's KV cache (start of a new sequence).
    pub fn reset(&mut self) -> Result<(), EngineError> {
        for (rank, r) in self.ranks.iter().enumerate() {
            r.tx.send(Command::Reset).map_err(|_| EngineError::RankLost(rank))?;
        }
        self.cached = 0;
        Ok(())
    }

    /// Appends `tokens` to the sequence and returns full-vocabulary logits (`rows` says which).
    pub fn forward(&mut self, tokens: &[u32], rows: LogitRows) -> Result<Vec<f32>, EngineError> {
        if self.failed {
            return Err(EngineError::RankLost(0));
        }
        let shape = &self.config.shape;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= shape.vocab) {
            return Err(ModelError::TokenOutOfRange { id, vocab: shape.vocab }.into());
        }
        let total = self.cached + tokens.len();
        if total > self.config.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                tokens: total,
                context: self.config.max_position_embeddings,
            }
            .into());
        }
        let tokens = Arc::new(tokens.to_vec());
        for (rank, r) in self.ranks.iter().enumerate() {
            let cmd = Command::Forward {
                tokens: Arc::clone(&tokens),
                rows,
            };
            if r.tx.send(cmd).is_err() {
                self.failed = true;
                return Err(EngineError::RankLost(rank));
            }
        }
        let mut first = None;
        let mut error = None;
        for (rank, r) in self.ranks.iter().enumerate() {
            match r.rx.recv() {
                Ok(Ok(logits)) => {
                    if rank == 0 {
                        first = Some(logits);
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
        self.cached = total;
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

#[allow(clippy::too_many_arguments)]
fn rank_main(
    rank: usize,
    dir: &Path,
    config: &ModelConfig,
    plan: &ShardPlan,
    dtype: WeightDtype,
    threads: usize,
    mut comm: Box<dyn Communicator>,
    commands: Receiver<Command>,
    results: Sender<Result<Vec<f32>, ModelError>>,
    ready: Sender<Result<usize, ModelError>>,
) {
    let loaded = WeightFiles::open(dir)
        .and_then(|files| RankModel::load(config, &files, plan, rank, dtype))
        .and_then(|m| CpuBackend::new(threads).map(|b| (m, b)));
    let (model, backend) = match loaded {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(model.weight_bytes()));
    let mut cache = KvCache::default();
    while let Ok(cmd) = commands.recv() {
        match cmd {
            Command::Reset => cache.clear(),
            Command::Forward { tokens, rows } => {
                let out = model.forward(&backend, comm.as_mut(), &mut cache, &tokens, rows);
                let failed = out.is_err();
                if results.send(out).is_err() || failed {
                    return;
                }
            }
        }
    }
}
