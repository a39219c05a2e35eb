//! The forward pass of one rank, written once over [`Backend`]: the layer loop, the
//! collective sites the plan put there, sequence parallelism, both reduce modes and the
//! logit-row selection. A step's buffers live in a [`Workspace`] kept in the model and
//! reused by the next step, so a steady stream of steps allocates no activations.
//!
//! ```text
//!   embed --(reduce)--> x ─┬─ norm ─(gather)─ qkv ─ attention ─ o ─(reduce)─┐
//!                          │<──────────────────── add + norm ───────────────┘
//!                          └─ (gather) ─ gate_up ─ silu·mul ─ down ─(reduce)─> next layer
//! ```

use std::ops::Range;

use tessera_kernels::{chunk_count, ChunkOutput};
use tessera_plan::{even_spans, ReduceMode};

use crate::backend::{Backend, HeadLayout, Weight};
use crate::error::ModelError;
use crate::rank::{check_tokens, Layer, RankModel};
use crate::step_seq::{logit_rows, StepSeq};

/// The buffers of one step, each grown to the largest step seen and reused after that.
pub struct Workspace<B: Backend> {
    step: B::Step,
    /// Residual stream of this rank's rows.
    x: B::Buf,
    normed: B::Buf,
    /// Every rank's normed rows (sequence parallelism).
    gathered: B::Buf,
    qkv: B::Buf,
    attn: B::Buf,
    /// A row-parallel projection's combined output.
    delta: B::Buf,
    /// A row-parallel projection's local partial sums.
    parts: B::Buf,
    gate_up: B::Buf,
    act: B::Buf,
    picked: B::Buf,
    picked_all: B::Buf,
    local_logits: B::Buf,
    exchange: B::Buf,
    logits: B::Buf,
}

/// Grows `buf` to hold `len` values (its contents are not kept).
fn grow<B: Backend>(backend: &B, buf: &mut B::Buf, len: usize) -> Result<(), ModelError> {
    if B::capacity(buf) < len {
        *buf = backend.alloc(len)?;
    }
    Ok(())
}

impl<B: Backend> Workspace<B> {
    fn new(backend: &B) -> Result<Self, ModelError> {
        let empty = || backend.alloc(0);
        Ok(Self {
            step: B::Step::default(),
            x: empty()?,
            normed: empty()?,
            gathered: empty()?,
            qkv: empty()?,
            attn: empty()?,
            delta: empty()?,
            parts: empty()?,
            gate_up: empty()?,
            act: empty()?,
            picked: empty()?,
            picked_all: empty()?,
            local_logits: empty()?,
            exchange: empty()?,
            logits: empty()?,
        })
    }
}

/// One row-parallel projection's place in the reduction.
#[derive(Clone, Copy)]
struct ReduceSite {
    /// Whether ranks hold parts of it (the plan put a collective after it).
    split: bool,
    /// Where this rank's columns start in the global reduction dimension.
    start: usize,
    /// Width of the fixed reduction chunks.
    chunk: usize,
}

/// A checked step: its rows and the logit rows it returns ([`RankModel::prepare_step`]).
pub struct StepRows {
    rows: Rows,
    /// Rows of logits the step returns, over all ranks.
    logit_rows: usize,
    /// This rank's rows among them.
    picks: Vec<usize>,
}

impl StepRows {
    /// Token rows of the step (all ranks' under sequence parallelism).
    pub fn rows(&self) -> usize {
        self.rows.t
    }

    /// Rows of logits the step returns.
    pub fn logit_rows(&self) -> usize {
        self.logit_rows
    }
}

/// The rows of a step: all `t` of them, and the `mine` this rank keeps between layers.
struct Rows {
    t: usize,
    mine: Range<usize>,
}

impl<B: Backend> RankModel<B> {
    /// Runs a batch of sequences' new tokens through the model, writing their keys and
    /// values into `cache`, and returns full-vocabulary logits for the rows each sequence
    /// asks for, sequence after sequence (every rank returns them).
    ///
    /// All tokens of the batch go through each matmul together; since every kernel computes
    /// each output row with one fixed reduction order, a row's result does not depend on
    /// which other rows share the batch.
    pub fn forward_batch(
        &self,
        backend: &B,
        comm: &mut B::Comm,
        cache: &mut B::Cache,
        seqs: &[StepSeq],
    ) -> Result<Vec<f32>, ModelError> {
        // One lock for the whole step: no other caller's step comes between its halves.
        let mut guard = self.workspace(backend)?;
        let Some(ws) = guard.as_mut() else {
            return Err(ModelError::BadBatch("workspace missing".into()));
        };
        let Some(step) = self.prepare_in(backend, ws, cache, seqs)? else {
            return Ok(Vec::new());
        };
        self.run_in(backend, comm, ws, cache, seqs, &step)?;
        if step.logit_rows == 0 {
            return Ok(Vec::new());
        }
        let logits = if self.gather_logits {
            &ws.logits
        } else {
            &ws.local_logits
        };
        backend.download(logits, step.logit_rows * self.logit_width())
    }

    /// The first half of [`RankModel::forward_batch`]: checks the batch and loads its
    /// inputs into the backend's step buffers (host-to-device copies, if any, happen here
    /// and only here); `None` for an empty batch. The caller runs it with
    /// [`RankModel::run_step`] before preparing another.
    pub fn prepare_step(
        &self,
        backend: &B,
        cache: &B::Cache,
        seqs: &[StepSeq],
    ) -> Result<Option<StepRows>, ModelError> {
        let mut guard = self.workspace(backend)?;
        let Some(ws) = guard.as_mut() else {
            return Err(ModelError::BadBatch("workspace missing".into()));
        };
        self.prepare_in(backend, ws, cache, seqs)
    }

    /// The second half of [`RankModel::forward_batch`]: the layers, collectives and output
    /// head of the step [`RankModel::prepare_step`] loaded, leaving the logits in the
    /// workspace ([`RankModel::with_logits`]). It reads no host input beyond `seqs` and,
    /// once a step of this shape has run, allocates nothing, so a device backend can
    /// capture it whole.
    pub fn run_step(
        &self,
        backend: &B,
        comm: &mut B::Comm,
        cache: &mut B::Cache,
        seqs: &[StepSeq],
        step: &StepRows,
    ) -> Result<(), ModelError> {
        let mut guard = self.workspace(backend)?;
        let Some(ws) = guard.as_mut() else {
            return Err(ModelError::BadBatch("workspace missing".into()));
        };
        self.run_in(backend, comm, ws, cache, seqs, step)
    }

    /// [`RankModel::prepare_step`] on a locked workspace.
    fn prepare_in(
        &self,
        backend: &B,
        ws: &mut Workspace<B>,
        cache: &B::Cache,
        seqs: &[StepSeq],
    ) -> Result<Option<StepRows>, ModelError> {
        let Some(rows) = self.check_batch(seqs)? else {
            return Ok(None);
        };
        let all_picks = logit_rows(seqs);
        let picks: Vec<usize> = all_picks
            .iter()
            .filter(|r| rows.mine.contains(r))
            .map(|r| r - rows.mine.start)
            .collect();
        backend.prepare(&mut ws.step, cache, seqs, &picks)?;
        Ok(Some(StepRows {
            rows,
            logit_rows: all_picks.len(),
            picks,
        }))
    }

    /// [`RankModel::run_step`] on a locked workspace.
    fn run_in(
        &self,
        backend: &B,
        comm: &mut B::Comm,
        ws: &mut Workspace<B>,
        cache: &mut B::Cache,
        seqs: &[StepSeq],
        step: &StepRows,
    ) -> Result<(), ModelError> {
        let rows = &step.rows;
        self.embed(backend, comm, ws, rows)?;
        for (l, layer) in self.layers.iter().enumerate() {
            self.layer(backend, comm, cache, seqs, ws, rows, l, layer)?;
        }
        let h = self.config.shape.hidden;
        if !self.layers.is_empty() {
            backend.add(&mut ws.x, &ws.delta, rows.mine.len() * h)?;
        }
        if step.logit_rows == 0 {
            return Ok(());
        }
        self.logits(backend, comm, ws, &step.picks, step.logit_rows)
    }

    /// Calls `f` with the buffer holding the last step's logits: `logit_rows` rows of
    /// [`RankModel::logit_width`] values.
    pub fn with_logits<R>(&self, f: impl FnOnce(&B::Buf) -> R) -> Result<R, ModelError> {
        let ws = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let Some(ws) = ws.as_ref() else {
            return Err(ModelError::BadBatch("no step has run".into()));
        };
        Ok(f(if self.gather_logits {
            &ws.logits
        } else {
            &ws.local_logits
        }))
    }

    /// Width of a row of logits: the full vocabulary when the plan gathers it, else this
    /// rank's slice (the whole vocabulary when the head is not split).
    pub fn logit_width(&self) -> usize {
        if self.gather_logits {
            self.config.shape.vocab
        } else {
            self.lm_span.len()
        }
    }

    /// The locked workspace, made on first use.
    fn workspace(
        &self,
        backend: &B,
    ) -> Result<std::sync::MutexGuard<'_, Option<Workspace<B>>>, ModelError> {
        let mut guard = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(Workspace::new(backend)?);
        }
        Ok(guard)
    }

    /// Checks positions, block tables and token ids; `None` for an empty batch.
    fn check_batch(&self, seqs: &[StepSeq]) -> Result<Option<Rows>, ModelError> {
        let context = self.config.max_position_embeddings;
        let mut t = 0;
        for s in seqs {
            let end = s.start + s.tokens.len();
            if end > context {
                return Err(ModelError::ContextOverflow {
                    tokens: end,
                    context,
                });
            }
            check_tokens(&s.tokens, self.config.shape.vocab)?;
            t += s.tokens.len();
        }
        if t == 0 {
            return Ok(None);
        }
        // Under sequence parallelism this rank keeps only `mine` of the token rows between
        // the split layers; otherwise it keeps them all.
        let mine = if self.sequence_parallel {
            let span = even_spans(t, self.world)[self.rank];
            span.start..span.end
        } else {
            0..t
        };
        Ok(Some(Rows { t, mine }))
    }

    /// The embedding rows of this rank's tokens into `ws.x`, summed over a split
    /// vocabulary (exactly one rank holds each token's row, so any order is exact).
    fn embed(
        &self,
        backend: &B,
        comm: &mut B::Comm,
        ws: &mut Workspace<B>,
        rows: &Rows,
    ) -> Result<(), ModelError> {
        let h = self.config.shape.hidden;
        let (t, mine) = (rows.t, rows.mine.clone());
        grow(backend, &mut ws.x, mine.len() * h)?;
        if !self.reduce_embedding {
            return backend.embed(&ws.step, mine, &self.embed, self.embed_span, &mut ws.x);
        }
        if self.sequence_parallel {
            grow(backend, &mut ws.parts, t * h)?;
            backend.embed(&ws.step, 0..t, &self.embed, self.embed_span, &mut ws.parts)?;
            let keep = mine.start * h..mine.end * h;
            return backend.reduce_scatter_ordered(comm, &ws.parts, t * h, t * h, keep, &mut ws.x);
        }
        backend.embed(&ws.step, 0..t, &self.embed, self.embed_span, &mut ws.x)?;
        backend.all_reduce_sum(comm, &mut ws.x, t * h)
    }

    /// Block `l`: attention and MLP, leaving the MLP's output in `ws.delta` for the next
    /// block's norm to add.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        backend: &B,
        comm: &mut B::Comm,
        cache: &mut B::Cache,
        seqs: &[StepSeq],
        ws: &mut Workspace<B>,
        rows: &Rows,
        l: usize,
        layer: &Layer<B>,
    ) -> Result<(), ModelError> {
        let shape = &self.config.shape;
        let (h, d, eps) = (shape.hidden, shape.head_dim, self.config.rms_norm_eps);
        let (t, local_t) = (rows.t, rows.mine.len());
        grow(backend, &mut ws.normed, local_t * h)?;
        if l == 0 {
            backend.rms_norm(&ws.x, local_t, &layer.input_norm, eps, &mut ws.normed)?;
        } else {
            let x = &mut ws.x;
            backend.add_rms_norm(
                x,
                &ws.delta,
                local_t,
                &layer.input_norm,
                eps,
                &mut ws.normed,
            )?;
        }
        self.gather_rows(backend, comm, ws, rows)?;
        let width = (layer.q_heads + 2 * layer.kv_heads) * d;
        grow(backend, &mut ws.qkv, t * width)?;
        grow(backend, &mut ws.attn, t * layer.q_heads * d)?;
        let input = if self.sequence_parallel {
            &ws.gathered
        } else {
            &ws.normed
        };
        backend.matmul(input, t, &layer.qkv, layer.qkv_bias.as_ref(), &mut ws.qkv)?;
        let heads = HeadLayout {
            layer: l,
            q_heads: layer.q_heads,
            kv_heads: layer.kv_heads,
            head_dim: d,
            kv_index: &layer.kv_index,
            kv_index_dev: &layer.kv_index_dev,
            window: self.config.sliding_window,
            rope: &self.rope,
        };
        backend.attention(&mut ws.qkv, t, &heads, cache, &ws.step, seqs, &mut ws.attn)?;
        let site = ReduceSite {
            split: layer.reduce_attention,
            start: layer.head_span.start * d,
            chunk: shape.attention_reduce_chunk(),
        };
        self.row_parallel(
            backend,
            comm,
            ws,
            ProjectionInput::Attn,
            rows,
            &layer.o,
            site,
        )?;
        let x = &mut ws.x;
        backend.add_rms_norm(x, &ws.delta, local_t, &layer.post_norm, eps, &mut ws.normed)?;
        self.gather_rows(backend, comm, ws, rows)?;
        let inter = layer.inter;
        grow(backend, &mut ws.gate_up, t * 2 * inter)?;
        grow(backend, &mut ws.act, t * inter)?;
        let input = if self.sequence_parallel {
            &ws.gathered
        } else {
            &ws.normed
        };
        backend.matmul(input, t, &layer.gate_up, None, &mut ws.gate_up)?;
        backend.silu_mul(&ws.gate_up, t, inter, &mut ws.act)?;
        let site = ReduceSite {
            split: layer.reduce_mlp,
            start: layer.inter_span.start,
            chunk: shape.mlp_reduce_chunk(),
        };
        self.row_parallel(
            backend,
            comm,
            ws,
            ProjectionInput::Act,
            rows,
            &layer.down,
            site,
        )
    }

    /// Under sequence parallelism, every rank's `ws.normed` rows gathered into
    /// `ws.gathered` in row order; otherwise nothing (the layer reads `ws.normed`).
    fn gather_rows(
        &self,
        backend: &B,
        comm: &mut B::Comm,
        ws: &mut Workspace<B>,
        rows: &Rows,
    ) -> Result<(), ModelError> {
        if !self.sequence_parallel {
            return Ok(());
        }
        let h = self.config.shape.hidden;
        grow(backend, &mut ws.gathered, rows.t * h)?;
        let local = rows.mine.len() * h;
        backend.all_gather(comm, &ws.normed, local, &mut ws.gathered, rows.t * h)
    }

    /// A row-parallel projection `input · wᵀ` of all rows, combined across ranks into
    /// `ws.delta` (this rank's rows of it).
    ///
    /// Fast mode: one matmul, then an all-reduce of the partial sums. Deterministic mode
    /// (see [`tessera_plan::ReduceMode`]): the rank whose columns start the reduction
    /// dimension folds its chunks and publishes one vector, later ranks publish one vector
    /// per chunk, and the ordered all-reduce continues the fold; an unsplit projection is
    /// folded locally.
    #[allow(clippy::too_many_arguments)]
    fn row_parallel(
        &self,
        backend: &B,
        comm: &mut B::Comm,
        ws: &mut Workspace<B>,
        input: ProjectionInput,
        rows: &Rows,
        w: &Weight<B>,
        site: ReduceSite,
    ) -> Result<(), ModelError> {
        let h = self.config.shape.hidden;
        let (t, mine) = (rows.t, &rows.mine);
        let full = t * h;
        let x = match input {
            ProjectionInput::Attn => &ws.attn,
            ProjectionInput::Act => &ws.act,
        };
        let deterministic = self.reduce == ReduceMode::Deterministic;
        if !site.split {
            grow(backend, &mut ws.delta, full)?;
            return if deterministic {
                backend.matmul_chunked(x, t, w, site.chunk, ChunkOutput::Fold, &mut ws.delta)
            } else {
                backend.matmul(x, t, w, None, &mut ws.delta)
            };
        }
        let local_len = match self.reduce {
            ReduceMode::Deterministic if w.cols == 0 => 0,
            ReduceMode::Deterministic if site.start > 0 => chunk_count(w.cols, site.chunk) * full,
            _ => full,
        };
        // Fast mode without sequence parallelism reduces in place in `delta`.
        let in_place = !deterministic && !self.sequence_parallel;
        let local = if in_place {
            &mut ws.delta
        } else {
            &mut ws.parts
        };
        grow(backend, local, local_len)?;
        match self.reduce {
            ReduceMode::Fast => backend.matmul(x, t, w, None, local)?,
            ReduceMode::Deterministic if local_len == 0 => {}
            ReduceMode::Deterministic => {
                let output = if site.start == 0 {
                    ChunkOutput::Fold
                } else {
                    ChunkOutput::Partials
                };
                backend.matmul_chunked(x, t, w, site.chunk, output, local)?
            }
        }
        if in_place {
            return backend.all_reduce_sum(comm, &mut ws.delta, full);
        }
        if self.sequence_parallel {
            grow(backend, &mut ws.delta, mine.len() * h)?;
            let keep = mine.start * h..mine.end * h;
            let out = &mut ws.delta;
            return backend.reduce_scatter_ordered(comm, &ws.parts, local_len, full, keep, out);
        }
        grow(backend, &mut ws.delta, full)?;
        backend.all_reduce_ordered(comm, &ws.parts, local_len, &mut ws.delta, full)
    }

    /// The logits of the picked rows (`picks`: this rank's rows, `n_rows` over all ranks):
    /// final norm, output head, and the vocabulary gather the plan asks for.
    fn logits(
        &self,
        backend: &B,
        comm: &mut B::Comm,
        ws: &mut Workspace<B>,
        picks: &[usize],
        n_rows: usize,
    ) -> Result<(), ModelError> {
        let shape = &self.config.shape;
        let (h, eps) = (shape.hidden, self.config.rms_norm_eps);
        grow(backend, &mut ws.picked, picks.len() * h)?;
        backend.pick_rows(&ws.x, h, picks, &ws.step, &mut ws.picked)?;
        let picked = if self.sequence_parallel {
            // Every rank needs every picked row for the vocabulary-parallel head; rows are
            // in order and shares are contiguous in rank order, so a gather keeps the order.
            grow(backend, &mut ws.picked_all, n_rows * h)?;
            let (local, out) = (&ws.picked, &mut ws.picked_all);
            backend.all_gather(comm, local, picks.len() * h, out, n_rows * h)?;
            &ws.picked_all
        } else {
            &ws.picked
        };
        grow(backend, &mut ws.normed, n_rows * h)?;
        backend.rms_norm(picked, n_rows, &self.final_norm, eps, &mut ws.normed)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let local_vocab = self.lm_span.len();
        grow(backend, &mut ws.local_logits, n_rows * local_vocab)?;
        backend.matmul(&ws.normed, n_rows, head, None, &mut ws.local_logits)?;
        if !self.gather_logits {
            return Ok(());
        }
        let vocab = shape.vocab;
        grow(backend, &mut ws.exchange, n_rows * vocab)?;
        grow(backend, &mut ws.logits, n_rows * vocab)?;
        let (local, spans) = (&ws.local_logits, &self.lm_spans);
        backend.gather_vocab(comm, local, n_rows, spans, &mut ws.exchange, &mut ws.logits)
    }
}

/// Which workspace buffer feeds a row-parallel projection.
#[derive(Clone, Copy)]
enum ProjectionInput {
    /// The attention output (`o_proj`).
    Attn,
    /// The MLP activation (`down_proj`).
    Act,
}
