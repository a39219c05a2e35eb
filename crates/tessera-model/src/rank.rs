//! One rank's shard of a Llama-family model and its forward pass.
//!
//! The loader applies the plan: every weight arrives already cut to this rank's slice. The
//! q/k/v projections are fused into one matrix, and gate/up into another, so a decode step
//! runs one matmul for each:
//!
//! ```text
//!   qkv [q_local*d + 2*kv_local*d, hidden]     gate_up [2*inter_local, hidden]
//!   +------------------+                       +-------------+
//!   | q rows (heads)   |                       | gate rows   |
//!   +------------------+                       +-------------+
//!   | k rows (kv heads)|                       | up rows     |
//!   +------------------+                       +-------------+
//!   | v rows (kv heads)|
//!   +------------------+
//! ```
//!
//! The collectives come from the plan: an all-reduce after `o_proj` when heads are split,
//! after `down_proj` when the MLP is split, after the embedding lookup when the vocabulary
//! is split, and an all-gather of the logits when the output head is split.

use std::path::Path;
use std::sync::Mutex;

use tessera_plan::{CollectiveSite, ReduceMode, Role, ShardPlan, Span, WeightKind};

use crate::backend::{Backend, PlanNeeds, Weight, WeightDtype};
use crate::config::ModelConfig;
use crate::cpu::CpuBackend;
use crate::error::ModelError;
use crate::forward::Workspace;
use crate::weights::WeightFiles;

/// One transformer block of a rank's shard.
pub(crate) struct Layer<B: Backend> {
    pub(crate) input_norm: B::Vector,
    pub(crate) post_norm: B::Vector,
    pub(crate) qkv: Weight<B>,
    pub(crate) qkv_bias: Option<B::Vector>,
    pub(crate) o: Weight<B>,
    pub(crate) gate_up: Weight<B>,
    pub(crate) down: Weight<B>,
    pub(crate) q_heads: usize,
    pub(crate) kv_heads: usize,
    /// For each local query head, its local key/value head.
    pub(crate) kv_index: Vec<usize>,
    pub(crate) kv_index_dev: B::Index,
    pub(crate) inter: usize,
    /// The plan puts a collective after `o_proj` ([`CollectiveSite::Attention`]).
    pub(crate) reduce_attention: bool,
    /// The plan puts a collective after `down_proj` ([`CollectiveSite::Mlp`]).
    pub(crate) reduce_mlp: bool,
    /// Global query heads whose `o_proj` columns this rank holds.
    pub(crate) head_span: Span,
    /// Global intermediate columns whose `down_proj` columns this rank holds.
    pub(crate) inter_span: Span,
}

/// Checks that every token id is inside the vocabulary (the one place Tessera checks it).
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<(), ModelError> {
    match tokens.iter().find(|&&id| id as usize >= vocab) {
        Some(&id) => Err(ModelError::TokenOutOfRange { id, vocab }),
        None => Ok(()),
    }
}

/// One rank's shard of the model on backend `B`, and the buffers its steps reuse.
pub struct RankModel<B: Backend = CpuBackend> {
    pub(crate) config: ModelConfig,
    pub(crate) rank: usize,
    pub(crate) embed: Weight<B>,
    pub(crate) embed_span: Span,
    /// `None` when the output head is the embedding (tied, same vocabulary split).
    pub(crate) lm_head: Option<Weight<B>>,
    pub(crate) lm_span: Span,
    /// The plan reduces the embedding lookup ([`CollectiveSite::Embedding`]).
    pub(crate) reduce_embedding: bool,
    /// The plan gathers the logits ([`CollectiveSite::LmHead`]).
    pub(crate) gather_logits: bool,
    /// Every rank's vocabulary span of the output head, in rank order.
    pub(crate) lm_spans: Vec<Span>,
    pub(crate) final_norm: B::Vector,
    pub(crate) layers: Vec<Layer<B>>,
    pub(crate) rope: B::Rope,
    pub(crate) reduce: ReduceMode,
    /// Whether token rows are sharded between the split layers (`megatron-sp`).
    pub(crate) sequence_parallel: bool,
    /// Number of ranks.
    pub(crate) world: usize,
    /// Buffers of the last step, reused by the next (grown when a step needs more).
    pub(crate) workspace: Mutex<Option<Workspace<B>>>,
}

/// Loads one weight of `rank`'s slice, cut by the plan; a tied head reads the embedding.
pub(crate) struct Loader<'a> {
    pub(crate) shape: &'a tessera_plan::ModelShape,
    pub(crate) files: &'a WeightFiles,
    pub(crate) plan: &'a ShardPlan,
    pub(crate) rank: usize,
}

impl Loader<'_> {
    /// The file name and this rank's role of a weight.
    pub(crate) fn name_role(&self, layer: usize, kind: WeightKind) -> (String, Role) {
        let name = match (kind, self.shape.tied_embeddings) {
            (WeightKind::LmHead, true) => WeightKind::Embedding.hf_name(0),
            _ => kind.hf_name(layer),
        };
        (name, self.plan.role(layer, kind, self.rank))
    }

    pub(crate) fn load(&self, layer: usize, kind: WeightKind) -> Result<Vec<f32>, ModelError> {
        let (name, role) = self.name_role(layer, kind);
        self.files.load(&name, kind.full_shape(self.shape), role)
    }

    /// Several weights of equal width stacked into one matrix (fused q/k/v, gate/up).
    fn matrix<B: Backend>(
        &self,
        backend: &B,
        parts: &[(usize, WeightKind)],
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
    ) -> Result<Weight<B>, ModelError> {
        if let Some(format) = dtype.block_format() {
            return self.block_matrix(backend, parts, rows, cols, format);
        }
        let mut data = Vec::with_capacity(rows * cols);
        for &(layer, kind) in parts {
            data.extend(self.load(layer, kind)?);
        }
        Ok(Weight {
            data: backend.matrix(data, rows, cols, dtype)?,
            rows,
            cols,
        })
    }
}

impl RankModel<CpuBackend> {
    /// Loads `rank`'s shard of the model in `files` as `plan` assigns it, for the CPU
    /// backend; row-parallel layers will combine their partial sums as `reduce` says.
    pub fn load(
        config: &ModelConfig,
        files: &WeightFiles,
        plan: &ShardPlan,
        rank: usize,
        dtype: WeightDtype,
        reduce: ReduceMode,
    ) -> Result<Self, ModelError> {
        let backend = CpuBackend::new(1)?;
        Self::load_on(&backend, config, files, plan, rank, dtype, reduce)
    }

    /// Loads from a model directory (config and weights) in one call.
    pub fn load_dir(
        dir: &Path,
        plan: &ShardPlan,
        rank: usize,
        dtype: WeightDtype,
        reduce: ReduceMode,
    ) -> Result<Self, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        let files = WeightFiles::open(dir)?;
        Self::load(&config, &files, plan, rank, dtype, reduce)
    }
}

impl<B: Backend> RankModel<B> {
    /// Loads `rank`'s shard as `plan` assigns it onto `backend`, which first refuses a
    /// plan it cannot run (reduce mode, sequence parallelism).
    pub fn load_on(
        backend: &B,
        config: &ModelConfig,
        files: &WeightFiles,
        plan: &ShardPlan,
        rank: usize,
        dtype: WeightDtype,
        reduce: ReduceMode,
    ) -> Result<Self, ModelError> {
        let shape = &config.shape;
        let sequence_parallel = plan.sequence_parallel && plan.world_size > 1;
        backend.supports(&PlanNeeds {
            reduce,
            sequence_parallel,
            world: plan.world_size,
        })?;
        if reduce == ReduceMode::Deterministic {
            plan.check_deterministic()?;
        }
        let loader = Loader {
            shape,
            files,
            plan,
            rank,
        };
        let h = shape.hidden;
        let sites: Vec<CollectiveSite> = plan.collectives().iter().map(|c| c.site).collect();
        let embed_span = plan.embedding.span(rank, shape.vocab);
        let lm_span = plan.lm_head.span(rank, shape.vocab);
        let tied = shape.tied_embeddings && lm_span == embed_span;
        let embed = loader.table(backend, embed_span.len(), h, dtype, tied)?;
        let lm_head = if tied {
            None
        } else {
            let head = [(0, WeightKind::LmHead)];
            Some(loader.matrix(backend, &head, lm_span.len(), h, dtype)?)
        };
        let layers = (0..shape.layers)
            .map(|l| Self::load_layer(backend, &loader, l, dtype, &sites))
            .collect::<Result<Vec<_>, _>>()?;
        let rope = backend.rope_table(
            shape.head_dim,
            config.max_position_embeddings,
            &config.rope_inv_freq(),
        )?;
        Ok(Self {
            config: config.clone(),
            rank,
            embed,
            embed_span,
            lm_head,
            lm_span,
            reduce_embedding: sites.contains(&CollectiveSite::Embedding),
            gather_logits: sites.contains(&CollectiveSite::LmHead),
            lm_spans: (0..plan.world_size)
                .map(|r| plan.lm_head.span(r, shape.vocab))
                .collect(),
            final_norm: backend.vector(loader.load(0, WeightKind::FinalNorm)?)?,
            layers,
            rope,
            reduce,
            sequence_parallel,
            world: plan.world_size,
            workspace: Mutex::new(None),
        })
    }

    /// Layer `l` of the shard, its collectives taken from the plan's `sites`.
    fn load_layer(
        backend: &B,
        loader: &Loader<'_>,
        l: usize,
        dtype: WeightDtype,
        sites: &[CollectiveSite],
    ) -> Result<Layer<B>, ModelError> {
        let (shape, plan, rank) = (loader.shape, loader.plan, loader.rank);
        let h = shape.hidden;
        let heads = plan.heads(l, rank);
        let inter_span = plan.layers[l].mlp.span(rank, shape.intermediate);
        let group = shape.group_size();
        let kv_index: Vec<usize> = (heads.q_heads.start..heads.q_heads.end)
            .map(|q| q / group - heads.kv_heads.start)
            .collect();
        let qkv = [WeightKind::QProj, WeightKind::KProj, WeightKind::VProj].map(|k| (l, k));
        let qkv_bias = if shape.qkv_bias {
            let mut b = loader.load(l, WeightKind::QBias)?;
            b.extend(loader.load(l, WeightKind::KBias)?);
            b.extend(loader.load(l, WeightKind::VBias)?);
            Some(backend.vector(b)?)
        } else {
            None
        };
        let (d, inter) = (shape.head_dim, inter_span.len());
        let qkv_rows = (heads.q_heads.len() + 2 * heads.kv_heads.len()) * d;
        let q_width = heads.q_heads.len() * d;
        let o = loader.matrix(backend, &[(l, WeightKind::OProj)], h, q_width, dtype)?;
        let down = loader.matrix(backend, &[(l, WeightKind::DownProj)], h, inter, dtype)?;
        let gate_up = [(l, WeightKind::GateProj), (l, WeightKind::UpProj)];
        Ok(Layer {
            input_norm: backend.vector(loader.load(l, WeightKind::InputNorm)?)?,
            post_norm: backend.vector(loader.load(l, WeightKind::PostAttentionNorm)?)?,
            qkv: loader.matrix(backend, &qkv, qkv_rows, h, dtype)?,
            qkv_bias,
            o,
            gate_up: loader.matrix(backend, &gate_up, 2 * inter, h, dtype)?,
            down,
            q_heads: heads.q_heads.len(),
            kv_heads: heads.kv_heads.len(),
            kv_index_dev: backend.index(&kv_index)?,
            kv_index,
            inter: inter_span.len(),
            reduce_attention: sites.contains(&CollectiveSite::Attention { layer: l }),
            reduce_mlp: sites.contains(&CollectiveSite::Mlp { layer: l }),
            head_span: heads.q_heads,
            inter_span,
        })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// This shard's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Bytes of weights this rank holds.
    pub fn weight_bytes(&self) -> usize {
        let m = |w: &Weight<B>| B::matrix_bytes(&w.data);
        let mut b = m(&self.embed) + self.lm_head.as_ref().map_or(0, m);
        for l in &self.layers {
            b += m(&l.qkv) + m(&l.o) + m(&l.gate_up) + m(&l.down);
            b += 2 * self.config.shape.hidden * 4;
        }
        b
    }

    /// Key/value width (kv heads x head_dim) of each layer on this rank, for the cache.
    pub fn kv_widths(&self) -> Vec<usize> {
        self.layers
            .iter()
            .map(|l| l.kv_heads * self.config.shape.head_dim)
            .collect()
    }
}
