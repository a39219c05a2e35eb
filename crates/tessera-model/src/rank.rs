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
use tessera_kernels::{chunk_count, ChunkOutput, PagedSeq, PagedShape, RopeTable};
use tessera_plan::{even_spans, AttentionSharding, ReduceMode, ShardPlan, Span, WeightKind};

use crate::backend::{Backend, Matrix, WeightDtype};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::paged::PagedKvCache;
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
    /// Global query heads whose `o_proj` columns this rank holds.
    head_span: Span,
    /// Global intermediate columns whose `down_proj` columns this rank holds.
    inter_span: Span,
}

/// One row-parallel projection's place in the deterministic reduction.
#[derive(Clone, Copy)]
struct ReduceSite {
    /// Whether ranks hold parts of it (an all-reduce follows).
    split: bool,
    /// Where this rank's columns start in the global reduction dimension.
    start: usize,
    /// Width of the fixed reduction chunks.
    chunk: usize,
}

/// Which positions' logits a forward pass returns for one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogitRows {
    /// None (a prefill chunk that does not reach the end of the prompt).
    None,
    /// Only the last position's (generation).
    Last,
    /// Every position's (scoring, tests).
    All,
}

impl LogitRows {
    /// How many rows of logits a sequence of `tokens` new tokens gets: its last rows.
    pub fn count(self, tokens: usize) -> usize {
        match self {
            Self::None => 0,
            Self::Last => tokens.min(1),
            Self::All => tokens,
        }
    }
}

/// The batch rows (token positions across `seqs`, in order) whose logits the sequences ask for.
pub fn logit_rows(seqs: &[SeqInput<'_>]) -> Vec<usize> {
    let mut rows = Vec::new();
    let mut offset = 0;
    for s in seqs {
        let n = s.tokens.len();
        offset += n;
        rows.extend(offset - s.logits.count(n)..offset);
    }
    rows
}

/// One sequence's part of a batched forward pass.
///
/// Its `tokens` sit at positions `start..start + tokens.len()`; keys and values of
/// positions `0..start` are already in the cache blocks listed by `block_table`
/// (`block_table[p / block_size]` holds position `p`), which must also cover the new tokens.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SeqInput<'a> {
    /// New token ids.
    pub tokens: &'a [u32],
    /// Position of the first new token.
    pub start: usize,
    /// Cache blocks of the sequence, in position order.
    pub block_table: &'a [u32],
    /// Which of its positions need logits.
    pub logits: LogitRows,
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
    /// Every rank's vocabulary span of the output head, in rank order.
    lm_spans: Vec<Span>,
    final_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope: RopeTable,
    reduce: ReduceMode,
    /// Whether token rows are sharded between the split layers (`megatron-sp`).
    sequence_parallel: bool,
    /// Number of ranks.
    world: usize,
}

impl RankModel {
    /// Loads `rank`'s shard of the model in `files` as `plan` assigns it; row-parallel
    /// layers will combine their partial sums as `reduce` says.
    pub fn load(
        config: &ModelConfig,
        files: &WeightFiles,
        plan: &ShardPlan,
        rank: usize,
        dtype: WeightDtype,
        reduce: ReduceMode,
    ) -> Result<Self, ModelError> {
        let shape = &config.shape;
        if reduce == ReduceMode::Deterministic {
            plan.check_deterministic()?;
        }
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
            Some(Matrix::new(
                load(0, WeightKind::LmHead)?,
                lm_span.len(),
                h,
                dtype,
            ))
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
                vec![
                    load(l, WeightKind::QProj)?,
                    load(l, WeightKind::KProj)?,
                    load(l, WeightKind::VProj)?,
                ],
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
                head_span: heads.q_heads,
                inter_span,
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
            lm_spans: (0..plan.world_size)
                .map(|r| plan.lm_head.span(r, shape.vocab))
                .collect(),
            final_norm: load(0, WeightKind::FinalNorm)?,
            layers,
            rope,
            reduce,
            sequence_parallel: plan.sequence_parallel && plan.world_size > 1,
            world: plan.world_size,
        })
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

    /// Key/value width (kv heads x head_dim) of each layer on this rank, for the cache.
    pub fn kv_widths(&self) -> Vec<usize> {
        self.layers
            .iter()
            .map(|l| l.kv_heads * self.config.shape.head_dim)
            .collect()
    }

    /// Runs a batch of sequences' new tokens through the model, writing their keys and
    /// values into `cache`, and returns full-vocabulary logits for the rows each sequence
    /// asks for, sequence after sequence (every rank returns them).
    ///
    /// All tokens of the batch go through each matmul together; since every kernel computes
    /// each output row with one fixed reduction order, a row's result does not depend on
    /// which other rows share the batch.
    pub fn forward_batch(
        &self,
        backend: &dyn Backend,
        comm: &mut dyn Communicator,
        cache: &mut PagedKvCache,
        seqs: &[SeqInput<'_>],
    ) -> Result<Vec<f32>, ModelError> {
        let shape = &self.config.shape;
        let h = shape.hidden;
        let mut positions = Vec::new();
        let mut tokens = Vec::new();
        for s in seqs {
            let end = s.start + s.tokens.len();
            if end > self.config.max_position_embeddings {
                return Err(ModelError::ContextOverflow {
                    tokens: end,
                    context: self.config.max_position_embeddings,
                });
            }
            cache.check_table(s.block_table, end)?;
            positions.extend(s.start..end);
            tokens.extend_from_slice(s.tokens);
        }
        let t = tokens.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        let eps = self.config.rms_norm_eps;

        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= shape.vocab) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: shape.vocab,
            });
        }
        // Under sequence parallelism this rank keeps only `mine` of the token rows between
        // the split layers; otherwise it keeps them all.
        let mine = if self.sequence_parallel {
            let span = even_spans(t, self.world)[self.rank];
            span.start..span.end
        } else {
            0..t
        };
        let local_t = mine.len();

        let lookup = |rows: std::ops::Range<usize>| {
            let mut x = vec![0.0f32; rows.len() * h];
            for (row, &id) in x.chunks_exact_mut(h).zip(&tokens[rows]) {
                if self.embed_span.contains(id as usize) {
                    self.embed
                        .row_into(id as usize - self.embed_span.start, row);
                }
            }
            x
        };
        let mut x = if !self.reduce_embedding {
            lookup(mine.clone())
        } else if self.sequence_parallel {
            // Exactly one rank holds each token's row, so the sum is exact in any order.
            let full = lookup(0..t);
            let mut x = vec![0.0f32; local_t * h];
            comm.reduce_scatter_ordered(&full, t * h, mine.start * h..mine.end * h, &mut x)?;
            x
        } else {
            let mut x = lookup(0..t);
            comm.all_reduce_sum(&mut x)?;
            x
        };

        let mut normed = vec![0.0f32; local_t * h];
        let mut gathered = if self.sequence_parallel {
            vec![0.0f32; t * h]
        } else {
            Vec::new()
        };
        let mut pending: Option<Vec<f32>> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            match pending.take() {
                Some(delta) => {
                    backend.add_rms_norm(&mut x, &delta, &layer.input_norm, eps, &mut normed)?
                }
                None => backend.rms_norm(&x, &layer.input_norm, eps, &mut normed)?,
            }
            let input = self.gather_rows(comm, &normed, &mut gathered)?;
            let attn = self.attention(backend, layer, l, cache, seqs, input, &positions)?;
            let site = ReduceSite {
                split: layer.reduce_attention,
                start: layer.head_span.start * shape.head_dim,
                chunk: shape.attention_reduce_chunk(),
            };
            let attn_out = self.row_parallel(backend, comm, &attn, t, &layer.o, site, &mine)?;
            backend.add_rms_norm(&mut x, &attn_out, &layer.post_norm, eps, &mut normed)?;
            let input = self.gather_rows(comm, &normed, &mut gathered)?;

            let inter = layer.inter;
            let mut gate_up = vec![0.0f32; t * 2 * inter];
            backend.matmul(input, t, &layer.gate_up, None, &mut gate_up)?;
            let mut act = vec![0.0f32; t * inter];
            if inter > 0 {
                for (a, gu) in act
                    .chunks_exact_mut(inter)
                    .zip(gate_up.chunks_exact(2 * inter))
                {
                    a.copy_from_slice(&gu[..inter]);
                    backend.silu_mul(a, &gu[inter..])?;
                }
            }
            let site = ReduceSite {
                split: layer.reduce_mlp,
                start: layer.inter_span.start,
                chunk: shape.mlp_reduce_chunk(),
            };
            pending = Some(self.row_parallel(backend, comm, &act, t, &layer.down, site, &mine)?);
        }
        if let Some(delta) = pending {
            for (xi, di) in x.iter_mut().zip(&delta) {
                *xi += *di;
            }
        }

        let rows = logit_rows(seqs);
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut picked = Vec::with_capacity(rows.len() * h);
        for &r in rows.iter().filter(|r| mine.contains(r)) {
            let r = r - mine.start;
            picked.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
        if self.sequence_parallel {
            // Every rank needs every picked row for the vocabulary-parallel head; rows are
            // in order and shares are contiguous in rank order, so a gather keeps the order.
            let mut all = vec![0.0f32; rows.len() * h];
            comm.all_gather(&picked, &mut all)?;
            picked = all;
        }
        let mut final_normed = vec![0.0f32; picked.len()];
        backend.rms_norm(&picked, &self.final_norm, eps, &mut final_normed)?;
        let n_rows = rows.len();
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let local_vocab = self.lm_span.len();
        let mut local = vec![0.0f32; n_rows * local_vocab];
        backend.matmul(&final_normed, n_rows, head, None, &mut local)?;
        if !self.gather_logits {
            return Ok(local);
        }
        // One gather for all rows: the buffer holds [rank][row][rank's vocabulary slice];
        // rearrange it into [row][vocab] using the plan's spans.
        let vocab = shape.vocab;
        let mut gathered = vec![0.0f32; n_rows * vocab];
        comm.all_gather(&local, &mut gathered)?;
        if n_rows == 1 {
            return Ok(gathered);
        }
        let mut out = vec![0.0f32; n_rows * vocab];
        for span in &self.lm_spans {
            let len = span.len();
            for r in 0..n_rows {
                let src = &gathered[n_rows * span.start + r * len..][..len];
                out[r * vocab + span.start..][..len].copy_from_slice(src);
            }
        }
        Ok(out)
    }

    /// A row-parallel projection `x · wᵀ` of `t` rows, combined across ranks.
    ///
    /// Fast mode: one matmul, then an all-reduce of the partial sums. Deterministic mode
    /// (see [`tessera_plan::ReduceMode`]): the rank whose columns start the reduction
    /// dimension folds its chunks and publishes one vector, later ranks publish one vector
    /// per chunk, and the ordered all-reduce continues the fold; an unsplit projection is
    /// folded locally. Either way every rank returns the full `[t, hidden]` result.
    #[allow(clippy::too_many_arguments)]
    fn row_parallel(
        &self,
        backend: &dyn Backend,
        comm: &mut dyn Communicator,
        x: &[f32],
        t: usize,
        w: &Matrix,
        site: ReduceSite,
        mine: &std::ops::Range<usize>,
    ) -> Result<Vec<f32>, ModelError> {
        let h = self.config.shape.hidden;
        let full = t * h;
        if !site.split {
            let mut out = vec![0.0f32; full];
            match self.reduce {
                ReduceMode::Fast => backend.matmul(x, t, w, None, &mut out)?,
                ReduceMode::Deterministic => {
                    backend.matmul_chunked(x, t, w, site.chunk, ChunkOutput::Fold, &mut out)?
                }
            }
            return Ok(out);
        }
        let local = match self.reduce {
            ReduceMode::Fast => {
                let mut y = vec![0.0f32; full];
                backend.matmul(x, t, w, None, &mut y)?;
                y
            }
            ReduceMode::Deterministic if w.cols == 0 => Vec::new(),
            ReduceMode::Deterministic if site.start == 0 => {
                let mut y = vec![0.0f32; full];
                backend.matmul_chunked(x, t, w, site.chunk, ChunkOutput::Fold, &mut y)?;
                y
            }
            ReduceMode::Deterministic => {
                let chunks = chunk_count(w.cols, site.chunk);
                let mut parts = vec![0.0f32; chunks * full];
                backend.matmul_chunked(x, t, w, site.chunk, ChunkOutput::Partials, &mut parts)?;
                parts
            }
        };
        if self.sequence_parallel {
            let mut out = vec![0.0f32; mine.len() * h];
            comm.reduce_scatter_ordered(&local, full, mine.start * h..mine.end * h, &mut out)?;
            Ok(out)
        } else if self.reduce == ReduceMode::Fast {
            let mut out = local;
            comm.all_reduce_sum(&mut out)?;
            Ok(out)
        } else {
            let mut out = vec![0.0f32; full];
            comm.all_reduce_ordered(&local, &mut out)?;
            Ok(out)
        }
    }

    /// The input rows of a split layer: this rank's `normed` rows as they are, or under
    /// sequence parallelism every rank's, gathered into `gathered` in row order.
    fn gather_rows<'a>(
        &self,
        comm: &mut dyn Communicator,
        normed: &'a [f32],
        gathered: &'a mut [f32],
    ) -> Result<&'a [f32], ModelError> {
        if !self.sequence_parallel {
            return Ok(normed);
        }
        comm.all_gather(normed, gathered)?;
        Ok(gathered)
    }

    /// The attention half of block `l` for the whole batch: returns this rank's attention
    /// output (its heads' columns), ready for the `o_proj` projection.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        backend: &dyn Backend,
        layer: &Layer,
        l: usize,
        cache: &mut PagedKvCache,
        seqs: &[SeqInput<'_>],
        normed: &[f32],
        positions: &[usize],
    ) -> Result<Vec<f32>, ModelError> {
        let d = self.config.shape.head_dim;
        let t = positions.len();
        let (qw, kvw) = (layer.q_heads * d, layer.kv_heads * d);
        let width = qw + 2 * kvw;
        let mut qkv = vec![0.0f32; t * width];
        backend.matmul(normed, t, &layer.qkv, layer.qkv_bias.as_deref(), &mut qkv)?;
        let mut q = vec![0.0f32; t * qw];
        let mut k = vec![0.0f32; t * kvw];
        if width > 0 {
            for (i, row) in qkv.chunks_exact(width).enumerate() {
                q[i * qw..(i + 1) * qw].copy_from_slice(&row[..qw]);
                k[i * kvw..(i + 1) * kvw].copy_from_slice(&row[qw..qw + kvw]);
            }
        }
        backend.rope(&mut q, layer.q_heads, positions, &self.rope)?;
        backend.rope(&mut k, layer.kv_heads, positions, &self.rope)?;
        let mut attn = vec![0.0f32; t * qw];
        if kvw > 0 {
            let mut row = 0;
            let mut paged = Vec::with_capacity(seqs.len());
            for s in seqs {
                for i in 0..s.tokens.len() {
                    let r = row + i;
                    let slot = cache.slot(s.block_table, s.start + i);
                    cache.write(
                        l,
                        slot,
                        &k[r * kvw..(r + 1) * kvw],
                        &qkv[r * width + qw + kvw..(r + 1) * width],
                    );
                }
                paged.push(PagedSeq {
                    row,
                    tokens: s.tokens.len(),
                    start: s.start,
                    block_table: s.block_table,
                });
                row += s.tokens.len();
            }
            let shape = PagedShape {
                head_dim: d,
                kv_heads: layer.kv_heads,
                kv_index: &layer.kv_index,
                window: self.config.sliding_window,
                block_size: cache.block_size(),
            };
            let (kc, vc) = cache.layer(l);
            backend.paged_attention(&q, kc, vc, &paged, &shape, &mut attn)?;
        }
        Ok(attn)
    }
}
