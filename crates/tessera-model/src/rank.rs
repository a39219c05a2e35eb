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

use tessera_comm::Communicator;
use tessera_kernels::{AttentionShape, RopeTable};
use tessera_plan::{AttentionSharding, ShardPlan, Span, WeightKind};

use crate::backend::{Backend, Matrix, WeightDtype};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::weights::WeightFiles;

struct Layer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    qkv: Matrix,
    qkv_bias: Option<Vec<f32>>,
    o: Matrix,
    gate_up: Matrix,
    down: Matrix,
    q_heads: usize,
    kv_heads: usize,
    /// For each local query head, its local key/value head.
    kv_index: Vec<usize>,
    inter: usize,
    reduce_attention: bool,
    reduce_mlp: bool,
}

/// Per-rank key/value cache of one sequence, contiguous per layer: `[position, kv_head, d]`.
#[derive(Debug, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every cached token (keeps the memory).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops cached tokens from position `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Only the last position's (generation).
    Last,
    /// Every position's (scoring, tests).
    All,
}

/// One rank's shard of the model.
pub struct RankModel {
    config: ModelConfig,
    rank: usize,
    embed: Matrix,
    embed_span: Span,
    /// `None` when the output head is the embedding (tied, same vocabulary split).
    lm_head: Option<Matrix>,
    lm_span: Span,
    reduce_embedding: bool,
    gather_logits: bool,
    final_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope: RopeTable,
}

impl RankModel {
    /// Loads `rank`'s shard of the model in `files` as `plan` assigns it.
    pub fn load(
        config: &ModelConfig,
        files: &WeightFiles,
        plan: &ShardPlan,
        rank: usize,
        dtype: WeightDtype,
    ) -> Result<Self, ModelError> {
        let shape = &config.shape;
        let load = |layer: usize, kind: WeightKind| -> Result<Vec<f32>, ModelError> {
            let name = match (kind, shape.tied_embeddings) {
                (WeightKind::LmHead, true) => WeightKind::Embedding.hf_name(0),
                _ => kind.hf_name(layer),
            };
            files.load(&name, kind.full_shape(shape), plan.role(layer, kind, rank))
        };
        let h = shape.hidden;
        let embed_span = plan.embedding.span(rank, shape.vocab);
        let lm_span = plan.lm_head.span(rank, shape.vocab);
        let embed = Matrix::new(load(0, WeightKind::Embedding)?, embed_span.len(), h, dtype);
        let lm_head = if shape.tied_embeddings && lm_span == embed_span {
            None
        } else {
            Some(Matrix::new(load(0, WeightKind::LmHead)?, lm_span.len(), h, dtype))
        };
        let mut layers = Vec::with_capacity(shape.layers);
        for l in 0..shape.layers {
            let heads = plan.heads(l, rank);
            let inter_span = plan.layers[l].mlp.span(rank, shape.intermediate);
            let group = shape.group_size();
            let kv_index = (heads.q_heads.start..heads.q_heads.end)
                .map(|q| q / group - heads.kv_heads.start)
                .collect();
            let qkv = Matrix::stack(
                vec![load(l, WeightKind::QProj)?, load(l, WeightKind::KProj)?, load(l, WeightKind::VProj)?],
                h,
                dtype,
            );
            let qkv_bias = if shape.qkv_bias {
                let mut b = load(l, WeightKind::QBias)?;
                b.extend(load(l, WeightKind::KBias)?);
                b.extend(load(l, WeightKind::VBias)?);
                Some(b)
            } else {
                None
            };
            let q_width = heads.q_heads.len() * shape.head_dim;
            layers.push(Layer {
                input_norm: load(l, WeightKind::InputNorm)?,
                post_norm: load(l, WeightKind::PostAttentionNorm)?,
                qkv,
                qkv_bias,
                o: Matrix::new(load(l, WeightKind::OProj)?, h, q_width, dtype),
                gate_up: Matrix::stack(
                    vec![load(l, WeightKind::GateProj)?, load(l, WeightKind::UpProj)?],
                    h,
                    dtype,
                ),
                down: Matrix::new(load(l, WeightKind::DownProj)?, h, inter_span.len(), dtype),
                q_heads: heads.q_heads.len(),
                kv_heads: heads.kv_heads.len(),
                kv_index,
                inter: inter_span.len(),
                reduce_attention: plan.world_size > 1
                    && matches!(plan.layers[l].attention, AttentionSharding::Heads { .. }),
                reduce_mlp: plan.world_size > 1 && plan.layers[l].mlp.is_split(),
            });
        }
        let rope = RopeTable::new(
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
            reduce_embedding: plan.world_size > 1 && plan.embedding.is_split(),
            gather_logits: plan.world_size > 1 && plan.lm_head.is_split(),
            final_norm: load(0, WeightKind::FinalNorm)?,
            layers,
            rope,
        })
    }

    /// Loads from a model directory (config and weights) in one call.
    pub fn load_dir(dir: &Path, plan: &ShardPlan, rank: usize, dtype: WeightDtype) -> Result<Self, ModelError> {
        let config = ModelConfig::from_dir(dir)?;
        let files = WeightFiles::open(dir)?;
        Self::load(&config, &files, plan, rank, dtype)
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
        let mut b = self.embed.bytes() + self.lm_head.as_ref().map_or(0, Matrix::bytes);
        for l in &self.layers {
            b += l.qkv.bytes() + l.o.bytes() + l.gate_up.bytes() + l.down.bytes();
            b += (l.input_norm.len() + l.post_norm.len()) * 4;
        }
        b
    }

    /// Runs `tokens` (at positions `cache.len()..`) through the model, appending to the cache,
    /// and returns full-vocabulary logits for the rows `rows` asks for (every rank returns them).
    pub fn forward(
        &self,
        backend: &dyn Backend,
        comm: &mut dyn Communicator,
        cache: &mut KvCache,
        tokens: &[u32],
        rows: LogitRows,
    ) -> Result<Vec<f32>, ModelError> {
        let shape = &self.config.shape;
        let (t, h) = (tokens.len(), shape.hidden);
        let start = cache.len;
        if start + t > self.config.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                tokens: start + t,
                context: self.config.max_position_embeddings,
            });
        }
        if t == 0 {
            return Ok(Vec::new());
        }
        let eps = self.config.rms_norm_eps;
        let positions: Vec<usize> = (start..start + t).collect();

        let mut x = vec![0.0f32; t * h];
        for (row, &id) in x.chunks_exact_mut(h).zip(tokens) {
            if id as usize >= shape.vocab {
                return Err(ModelError::TokenOutOfRange { id, vocab: shape.vocab });
            }
            if self.embed_span.contains(id as usize) {
                self.embed.row_into(id as usize - self.embed_span.start, row);
            }
        }
        if self.reduce_embedding {
            comm.all_reduce_sum(&mut x)?;
        }
        if cache.k.len() != self.layers.len() {
            cache.k = vec![Vec::new(); self.layers.len()];
            cache.v = vec![Vec::new(); self.layers.len()];
        }

        let mut normed = vec![0.0f32; t * h];
        let mut pending: Option<Vec<f32>> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            match pending.take() {
                Some(delta) => backend.add_rms_norm(&mut x, &delta, &layer.input_norm, eps, &mut normed)?,
                None => backend.rms_norm(&x, &layer.input_norm, eps, &mut normed)?,
            }
            let mut attn_out = self.attention(backend, comm, layer, l, cache, &normed, &positions)?;
            if layer.reduce_attention {
                comm.all_reduce_sum(&mut attn_out)?;
            }
            backend.add_rms_norm(&mut x, &attn_out, &layer.post_norm, eps, &mut normed)?;

            let inter = layer.inter;
            let mut gate_up = vec![0.0f32; t * 2 * inter];
            backend.matmul(&normed, t, &layer.gate_up, None, &mut gate_up)?;
            let mut act = vec![0.0f32; t * inter];
            for (a, gu) in act.chunks_exact_mut(inter.max(1)).zip(gate_up.chunks_exact(2 * inter.max(1))) {
                a.copy_from_slice(&gu[..inter]);
                backend.silu_mul(a, &gu[inter..])?;
            }
            let mut mlp_out = vec![0.0f32; t * h];
            backend.matmul(&act, t, &layer.down, None, &mut mlp_out)?;
            if layer.reduce_mlp {
                comm.all_reduce_sum(&mut mlp_out)?;
            }
            pending = Some(mlp_out);
        }
        cache.len = start + t;

        let first_row = match rows {
            LogitRows::Last => t - 1,
            LogitRows::All => 0,
        };
        let n_rows = t - first_row;
        let x_rows = &mut x[first_row * h..];
        let mut final_normed = vec![0.0f32; n_rows * h];
        match pending {
            Some(delta) => backend.add_rms_norm(x_rows, &delta[first_row * h..], &self.final_norm, eps, &mut final_normed)?,
            None => backend.rms_norm(x_rows, &self.final_norm, eps, &mut final_normed)?,
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let local_vocab = self.lm_span.len();
        let mut local = vec![0.0f32; n_rows * local_vocab];
        backend.matmul(&final_normed, n_rows, head, None, &mut local)?;
        if !self.gather_logits {
            return Ok(local);
        }
        let vocab = shape.vocab;
        let mut out = vec![0.0f32; n_rows * vocab];
        let mut gathered = vec![0.0f32; vocab];
        for r in 0..n_rows {
            comm.all_gather(&local[r * local_vocab..(r + 1) * local_vocab], &mut gathered)?;
            out[r * vocab..(r + 1) * vocab].copy_from_slice(&gathered);
        }
        Ok(out)
    }

    /// The attention half of block `l`: returns this rank's (partial) `o_proj` output.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        backend: &dyn Backend,
        _comm: &mut dyn Communicator,
        layer: &Layer,
        l: usize,
        cache: &mut KvCache,
        normed: &[f32],
        positions: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        let d = self.config.shape.head_dim;
        let h = self.config.shape.hidden;
        let t = positions.len();
        let start = positions[0];
        let (qw, kvw) = (layer.q_heads * d, layer.kv_heads * d);
        let width = qw + 2 * kvw;
        let mut qkv = vec![0.0f32; t * width];
        backend.matmul(normed, t, &layer.qkv, layer.qkv_bias.as_deref(), &mut qkv)?;
        let mut q = vec![0.0f32; t * qw];
        let mut k = vec![0.0f32; t * kvw];
        for (i, row) in qkv.chunks_exact(width.max(1)).enumerate() {
            q[i * qw..(i + 1) * qw].copy_from_slice(&row[..qw]);
            k[i * kvw..(i + 1) * kvw].copy_from_slice(&row[qw..qw + kvw]);
        }
        backend.rope(&mut q, layer.q_heads, positions, &self.rope)?;
        backend.rope(&mut k, layer.kv_heads, positions, &self.rope)?;
        let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
        let needed = (start + t) * kvw;
        if kc.len() < needed {
            kc.resize(needed, 0.0);
            vc.resize(needed, 0.0);
        }
        kc[start * kvw..needed].copy_from_slice(&k);
        for (i, row) in qkv.chunks_exact(width.max(1)).enumerate() {
            vc[(start + i) * kvw..(start + i + 1) * kvw].copy_from_slice(&row[qw + kvw..]);
        }
        let mut attn = vec![0.0f32; t * qw];
        let shape = AttentionShape {
            tokens: t,
            start,
            head_dim: d,
            kv_heads: layer.kv_heads,
            kv_index: &layer.kv_index,
            window: self.config.sliding_window,
        };
        backend.attention(&q, &kc[..needed], &vc[..needed], &shape, &mut attn)?;
        let mut out = vec![0.0f32; t * h];
        backend.matmul(&attn, t, &layer.o, None, &mut out)?;
        Ok(out)
    }
}
