//! One rank's shard of a Llama-family model resident on a GPU, and its forward pass.
//!
//! Same plan slice and fused layouts as `tessera_model::RankModel` (q/k/v stacked into
//! one matrix, gate/up into another); activations, weights and the key/value block pool
//! stay on the device, and only token ids go in and logits (or sampled ids) come out.
//!
//! ```text
//!   per layer:  normed --gemm--> qkv [t, q|k|v] --rope(q,k)--> kv_write(k,v -> pool)
//!               paged_attention(q, pool) --gemm o--> (all-reduce) --add+norm-->
//!               --gemm gate_up--> silu_mul --gemm down--> (all-reduce) -> next layer
//! ```
//!
//! A step's inputs (token ids, positions, block tables) are copied into device buffers
//! that stay put between steps, and the kernels then read only those: a decode step
//! (one new token per sequence) of a given padded batch size and split count is captured
//! once as a CUDA graph and replayed after that, so small batches are not bound by
//! kernel launches.

use std::collections::HashMap;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice};
use tessera_model::{ModelConfig, StepSeq, WeightFiles};
use tessera_plan::{AttentionSharding, ShardPlan, Span, WeightKind};

use crate::collective::DeviceComm;
use crate::device::Gpu;
use crate::error::{ensure, CudaError};
use crate::ops::{
    self, AttentionRows, AttentionScratch, AttentionShape, DeviceDtype, DeviceMatrix, DeviceRope,
    Padding,
};

struct CudaLayer {
    input_norm: CudaSlice<f32>,
    post_norm: CudaSlice<f32>,
    qkv: DeviceMatrix,
    qkv_bias: Option<CudaSlice<f32>>,
    o: DeviceMatrix,
    gate_up: DeviceMatrix,
    down: DeviceMatrix,
    q_heads: usize,
    kv_heads: usize,
    kv_index: CudaSlice<i32>,
    inter: usize,
    reduce_attention: bool,
    reduce_mlp: bool,
}

/// The key/value block pool of every layer on one GPU: `k[layer]` is
/// `[block][slot][kv head][d]` in f32, as in `tessera_model::PagedKvCache`, plus one
/// block past the last that no sequence owns: the padded rows of a CUDA graph write there.
pub struct CudaKvCache {
    k: Vec<CudaSlice<f32>>,
    v: Vec<CudaSlice<f32>>,
    block_size: usize,
    num_blocks: usize,
}

impl CudaKvCache {
    /// Allocates `num_blocks` blocks of `block_size` tokens for layers of the given widths.
    pub fn new(
        gpu: &Gpu,
        widths: &[usize],
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self, CudaError> {
        ensure(block_size > 0 && num_blocks > 0, "CudaKvCache", || {
            "empty pool".into()
        })?;
        let mut k = Vec::with_capacity(widths.len());
        let mut v = Vec::with_capacity(widths.len());
        for &w in widths {
            k.push(gpu.zeros::<f32>((num_blocks + 1) * block_size * w)?);
            v.push(gpu.zeros::<f32>((num_blocks + 1) * block_size * w)?);
        }
        Ok(Self {
            k,
            v,
            block_size,
            num_blocks,
        })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool (the trash block not counted).
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// The block padded rows use.
    fn trash_block(&self) -> u32 {
        self.num_blocks as u32
    }

    /// A digest of every layer's pool addresses and the block geometry: a captured graph
    /// is valid only for the pool it was captured with.
    fn digest(&self, gpu: &Gpu) -> u64 {
        let words = self
            .k
            .iter()
            .chain(&self.v)
            .map(|b| gpu.ptr(b))
            .chain([self.block_size as u64, self.num_blocks as u64]);
        words.fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
            (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(7)
        })
    }
}

/// Most rows of a decode step run as a CUDA graph (larger steps run eagerly).
pub const MAX_GRAPH_ROWS: usize = 256;

/// The padded row count of a decode graph for `rows` rows: the next power of two.
pub fn graph_rows(rows: usize) -> usize {
    rows.max(1).next_power_of_two()
}

/// Widths of the step buffers.
#[derive(Clone, Copy, Debug)]
struct Dims {
    hidden: usize,
    qkv: usize,
    q: usize,
    inter: usize,
    /// Longest vocabulary slice of any rank (the gathered logits are padded to it).
    span: usize,
    world: usize,
    vocab: usize,
    /// Query heads of the whole model (sizes shared by every rank).
    heads: usize,
}

/// A step's device buffers, kept between steps and grown to the largest step seen.
struct StepBuffers {
    rows: usize,
    logit_rows: usize,
    ids: CudaSlice<i32>,
    pick: CudaSlice<i32>,
    x: CudaSlice<f32>,
    normed: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    delta: CudaSlice<f32>,
    gate_up: CudaSlice<f32>,
    act: CudaSlice<f32>,
    picked: CudaSlice<f32>,
    local: CudaSlice<f32>,
    gathered: CudaSlice<f32>,
    /// Full-vocabulary rows rebuilt from `gathered` (vocabulary-split heads only).
    full: CudaSlice<f32>,
    x_half: CudaSlice<u16>,
}

impl StepBuffers {
    /// Buffers for `rows` rows and `logit_rows` rows of logits. Each is written by a kernel
    /// before it is read (embedding, norm, GEMM, silu_mul, gather); `attn` is zeroed for a
    /// layer whose rank holds no heads.
    fn new(gpu: &Gpu, d: &Dims, rows: usize, logit_rows: usize) -> Result<Self, CudaError> {
        let widest_k = d.hidden.max(d.q).max(d.inter);
        Ok(Self {
            rows,
            logit_rows,
            ids: gpu.zeros(rows)?,
            pick: gpu.zeros(logit_rows)?,
            x: gpu.scratch(rows * d.hidden)?,
            normed: gpu.scratch(rows * d.hidden)?,
            qkv: gpu.scratch(rows * d.qkv)?,
            attn: gpu.zeros(rows * d.q)?,
            delta: gpu.scratch(rows * d.hidden)?,
            gate_up: gpu.scratch(rows * 2 * d.inter)?,
            act: gpu.scratch(rows * d.inter)?,
            picked: gpu.scratch(logit_rows * d.hidden)?,
            local: gpu.zeros(logit_rows * d.span)?,
            gathered: gpu.zeros(if d.world > 1 {
                d.world * logit_rows * d.span
            } else {
                1
            })?,
            full: gpu.zeros(if d.world > 1 { logit_rows * d.vocab } else { 1 })?,
            x_half: gpu.zeros(rows.max(logit_rows) * widest_k)?,
        })
    }
}

/// Logits left on the device: `rows` rows of the full vocabulary.
pub struct DeviceLogits {
    /// Rows (one per position that asked for logits).
    pub rows: usize,
    /// Vocabulary size (row width).
    pub vocab: usize,
    /// `[rows, vocab]`.
    pub data: CudaSlice<f32>,
}

/// One rank's shard of the model on one GPU.
pub struct CudaRankModel {
    gpu: Gpu,
    config: ModelConfig,
    embed: DeviceMatrix,
    embed_span: Span,
    lm_head: Option<DeviceMatrix>,
    reduce_embedding: bool,
    gather_logits: bool,
    /// Each rank's first column and width of the vocabulary (device, for `unpad_logits`).
    span_starts: CudaSlice<i32>,
    span_lens: CudaSlice<i32>,
    final_norm: CudaSlice<f32>,
    layers: Vec<CudaLayer>,
    rope: DeviceRope,
    dims: Dims,
    bufs: Option<StepBuffers>,
    attn_rows: AttentionRows,
    scratch: AttentionScratch,
    /// Captured decode steps by (padded rows, decode splits, keys per split), with the
    /// collective calls and bytes each replay makes.
    graphs: HashMap<(usize, usize, usize), (CudaGraph, u64, u64)>,
    /// Digest of the pool the graphs write (a graph holds its addresses).
    graph_pool: u64,
    use_graphs: bool,
    graph_replays: u64,
}

/// Where a shard's weights come from.
pub enum WeightSource<'a> {
    /// Hugging Face safetensors, cut by the plan.
    Files(&'a WeightFiles),
    /// Seeded uniform values generated on the device (benchmarks): the same seed gives
    /// the same model, but not the model of `tessera_model::synthetic`.
    DeviceRandom(u64),
}

impl CudaRankModel {
    /// Loads `rank`'s shard as `plan` assigns it, onto `gpu`, weights stored as `dtype`.
    // TODO(issue 14): split when the CUDA forward moves onto RankModel
    // (and the CLI reads TESSERA_CUDA_GRAPHS and passes it down).
    #[allow(clippy::too_many_lines, clippy::disallowed_methods)]
    pub fn load(
        gpu: Gpu,
        config: &ModelConfig,
        source: WeightSource<'_>,
        plan: &ShardPlan,
        rank: usize,
        dtype: DeviceDtype,
    ) -> Result<Self, CudaError> {
        let shape = &config.shape;
        let h = shape.hidden;
        let mut counter = 0u64;
        // One tensor: its host values (files) or device-random values, as a matrix.
        let mut matrix = |gpu: &Gpu,
                          parts: &[(usize, WeightKind)],
                          rows: usize,
                          cols: usize|
         -> Result<DeviceMatrix, CudaError> {
            counter += 1;
            match &source {
                WeightSource::Files(files) => {
                    let mut data = Vec::with_capacity(rows * cols);
                    for &(layer, kind) in parts {
                        data.extend(load_weight(files, shape, plan, rank, layer, kind)?);
                    }
                    DeviceMatrix::upload(gpu, &data, rows, cols, dtype)
                }
                WeightSource::DeviceRandom(seed) => {
                    let scale = 2.0 / (cols.max(1) as f32).sqrt();
                    DeviceMatrix::random(
                        gpu,
                        rows,
                        cols,
                        dtype,
                        seed.wrapping_mul(1_000_003).wrapping_add(counter),
                        scale,
                        0.0,
                    )
                }
            }
        };
        let mut norm_counter = 0u64;
        let mut vector = |gpu: &Gpu,
                          layer: usize,
                          kind: WeightKind,
                          len: usize|
         -> Result<CudaSlice<f32>, CudaError> {
            norm_counter += 1;
            match &source {
                WeightSource::Files(files) => {
                    gpu.upload(&load_weight(files, shape, plan, rank, layer, kind)?)
                }
                WeightSource::DeviceRandom(seed) => ops::random_f32(
                    gpu,
                    len,
                    seed.wrapping_add(0x5eed_0000 + norm_counter),
                    0.2,
                    1.0,
                ),
            }
        };
        let embed_span = plan.embedding.span(rank, shape.vocab);
        let lm_span = plan.lm_head.span(rank, shape.vocab);
        let embed = matrix(&gpu, &[(0, WeightKind::Embedding)], embed_span.len(), h)?;
        let lm_head = if shape.tied_embeddings && lm_span == embed_span {
            None
        } else {
            // A tied head split differently from the embedding reads the embedding's rows
            // (`load_weight` names the embedding for a tied head).
            Some(matrix(&gpu, &[(0, WeightKind::LmHead)], lm_span.len(), h)?)
        };
        let mut layers = Vec::with_capacity(shape.layers);
        for l in 0..shape.layers {
            let heads = plan.heads(l, rank);
            let inter = plan.layers[l].mlp.span(rank, shape.intermediate).len();
            let group = shape.group_size();
            let kv_index: Vec<i32> = (heads.q_heads.start..heads.q_heads.end)
                .map(|q| (q / group - heads.kv_heads.start) as i32)
                .collect();
            let (qh, kvh, d) = (heads.q_heads.len(), heads.kv_heads.len(), shape.head_dim);
            let qkv = matrix(
                &gpu,
                &[
                    (l, WeightKind::QProj),
                    (l, WeightKind::KProj),
                    (l, WeightKind::VProj),
                ],
                (qh + 2 * kvh) * d,
                h,
            )?;
            let qkv_bias = match (&source, shape.qkv_bias) {
                (WeightSource::Files(files), true) => {
                    let mut b = load_weight(files, shape, plan, rank, l, WeightKind::QBias)?;
                    b.extend(load_weight(files, shape, plan, rank, l, WeightKind::KBias)?);
                    b.extend(load_weight(files, shape, plan, rank, l, WeightKind::VBias)?);
                    Some(gpu.upload(&b)?)
                }
                (WeightSource::DeviceRandom(_), true) => {
                    Some(gpu.zeros::<f32>((qh + 2 * kvh) * d)?)
                }
                _ => None,
            };
            layers.push(CudaLayer {
                input_norm: vector(&gpu, l, WeightKind::InputNorm, h)?,
                post_norm: vector(&gpu, l, WeightKind::PostAttentionNorm, h)?,
                qkv,
                qkv_bias,
                o: matrix(&gpu, &[(l, WeightKind::OProj)], h, qh * d)?,
                gate_up: matrix(
                    &gpu,
                    &[(l, WeightKind::GateProj), (l, WeightKind::UpProj)],
                    2 * inter,
                    h,
                )?,
                down: matrix(&gpu, &[(l, WeightKind::DownProj)], h, inter)?,
                q_heads: qh,
                kv_heads: kvh,
                kv_index: gpu.upload(if kv_index.is_empty() { &[0] } else { &kv_index })?,
                inter,
                reduce_attention: plan.world_size > 1
                    && matches!(plan.layers[l].attention, AttentionSharding::Heads { .. }),
                reduce_mlp: plan.world_size > 1 && plan.layers[l].mlp.is_split(),
            });
        }
        let final_norm = vector(&gpu, 0, WeightKind::FinalNorm, h)?;
        let rope = DeviceRope::new(
            &gpu,
            shape.head_dim,
            config.max_position_embeddings,
            &config.rope_inv_freq(),
        )?;
        let dims = Dims {
            hidden: h,
            qkv: layers
                .iter()
                .map(|l| (l.q_heads + 2 * l.kv_heads) * shape.head_dim)
                .max()
                .unwrap_or(0),
            q: layers
                .iter()
                .map(|l| l.q_heads * shape.head_dim)
                .max()
                .unwrap_or(0),
            inter: layers.iter().map(|l| l.inter).max().unwrap_or(0),
            span: (0..plan.world_size)
                .map(|r| plan.lm_head.span(r, shape.vocab).len())
                .max()
                .unwrap_or(0),
            world: plan.world_size,
            vocab: shape.vocab,
            heads: shape.heads,
        };
        let span_starts: Vec<i32> = (0..plan.world_size)
            .map(|r| plan.lm_head.span(r, shape.vocab).start as i32)
            .collect();
        let span_lens: Vec<i32> = (0..plan.world_size)
            .map(|r| plan.lm_head.span(r, shape.vocab).len() as i32)
            .collect();
        let span_starts = gpu.upload(&span_starts)?;
        let span_lens = gpu.upload(&span_lens)?;
        let attn_rows = AttentionRows::empty(&gpu)?;
        let scratch = AttentionScratch::new(&gpu)?;
        gpu.synchronize()?;
        Ok(Self {
            config: config.clone(),
            embed,
            embed_span,
            lm_head,
            reduce_embedding: plan.world_size > 1 && plan.embedding.is_split(),
            gather_logits: plan.world_size > 1 && plan.lm_head.is_split(),
            span_starts,
            span_lens,
            final_norm,
            layers,
            rope,
            dims,
            bufs: None,
            attn_rows,
            scratch,
            graphs: HashMap::new(),
            graph_pool: 0,
            use_graphs: std::env::var("TESSERA_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            graph_replays: 0,
            gpu,
        })
    }

    /// The GPU the shard lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> usize {
        let mut b = self.embed.bytes() + self.lm_head.as_ref().map_or(0, DeviceMatrix::bytes);
        for l in &self.layers {
            b += l.qkv.bytes() + l.o.bytes() + l.gate_up.bytes() + l.down.bytes();
            b += 2 * self.config.shape.hidden * 4;
        }
        b
    }

    /// Key/value width of each layer on this rank, for [`CudaKvCache::new`].
    pub fn kv_widths(&self) -> Vec<usize> {
        self.layers
            .iter()
            .map(|l| l.kv_heads * self.config.shape.head_dim)
            .collect()
    }

    /// Whether decode steps run as CUDA graphs (on by default; `TESSERA_CUDA_GRAPHS=0`
    /// turns them off at load).
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
        if !on {
            self.graphs.clear();
        }
    }

    /// Graphs captured so far (one per padded batch size and split count) and the steps
    /// that replayed one.
    pub fn graph_stats(&self) -> (usize, u64) {
        (self.graphs.len(), self.graph_replays)
    }

    /// Runs a batch of sequences' new tokens (see `tessera_model::StepSeq`), writing their
    /// keys and values into `cache`; returns the logits of the rows each sequence asks
    /// for, in sequence order, on the device.
    pub fn forward(
        &mut self,
        comm: &mut dyn DeviceComm,
        cache: &mut CudaKvCache,
        seqs: &[StepSeq],
    ) -> Result<DeviceLogits, CudaError> {
        let vocab = self.config.shape.vocab;
        let mut ids = Vec::new();
        let mut spec = Vec::with_capacity(seqs.len());
        for s in seqs {
            let end = s.start + s.tokens.len();
            ensure(
                end <= self.config.max_position_embeddings,
                "forward",
                || {
                    format!(
                        "{end} tokens exceed the context of {}",
                        self.config.max_position_embeddings
                    )
                },
            )?;
            tessera_model::check_tokens(&s.tokens, vocab)?;
            ids.extend(s.tokens.iter().map(|&id| id as i32));
            spec.push((s.start, s.tokens.len(), &s.block_table[..]));
        }
        let t = ids.len();
        let picked: Vec<i32> = tessera_model::logit_rows(seqs)
            .into_iter()
            .map(|r| r as i32)
            .collect();
        let n_rows = picked.len();
        if t == 0 || n_rows == 0 {
            // Nothing asks for logits, but the keys and values must still be written.
            if t > 0 {
                self.prepare(cache, &spec, ids, &[0], false)?;
                self.run(comm, cache, t, 0)?;
            }
            return Ok(DeviceLogits {
                rows: 0,
                vocab,
                data: self.gpu.zeros::<f32>(1)?,
            });
        }
        // A decode step (one new token per sequence, each asking for its logits) can run
        // as a graph of a padded, fixed shape.
        // (Then row i asks for its own logits: the picked rows are 0..t in order.)
        let decode = n_rows == t && seqs.iter().all(|s| s.tokens.len() == 1);
        // Whether to pad depends only on what every rank shares (the batch and the kind of
        // communicator), never on this rank's graph state: all ranks must issue
        // collectives of the same sizes.
        let pad = comm.capturable() && decode && t <= MAX_GRAPH_ROWS;
        let (rows, logit_rows) = self.prepare(cache, &spec, ids, &picked, pad)?;
        if pad && self.use_graphs {
            let key = (rows, self.attn_rows.splits, self.attn_rows.split_len);
            if let Some((g, calls, bytes)) = self.graphs.get(&key) {
                g.launch()?;
                comm.add_replayed(*calls, *bytes);
                self.graph_replays += 1;
            } else {
                // This step runs eagerly (which also makes the GEMM plans and NCCL's
                // lazy set-up happen outside a capture); the next ones replay.
                self.run(comm, cache, rows, logit_rows)?;
                let before = comm.stats();
                let captured = self.capture(comm, cache, rows, logit_rows);
                let after = comm.stats();
                match captured {
                    Ok(g) => {
                        tracing::debug!(rows, splits = key.1, "captured a decode graph");
                        let calls = after.calls.saturating_sub(before.calls);
                        let bytes = after.bytes_moved.saturating_sub(before.bytes_moved);
                        self.graphs.insert(key, (g, calls, bytes));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "CUDA graph capture failed; decode runs eagerly from now on");
                        self.set_graphs(false);
                    }
                }
            }
        } else {
            self.run(comm, cache, rows, logit_rows)?;
        }
        self.logits(n_rows)
    }

    /// Copies a step's inputs into the kept device buffers (growing them if needed, which
    /// drops the captured graphs); returns (rows, logit rows) after padding.
    fn prepare(
        &mut self,
        cache: &CudaKvCache,
        spec: &[(usize, usize, &[u32])],
        mut ids: Vec<i32>,
        picked: &[i32],
        graph: bool,
    ) -> Result<(usize, usize), CudaError> {
        let t = ids.len();
        let rows = if graph { graph_rows(t) } else { t };
        let padding = graph.then(|| Padding {
            rows,
            trash_block: cache.trash_block(),
        });
        let mut moved =
            self.attn_rows
                .fill(&self.gpu, spec, cache.block_size, cache.num_blocks, padding)?;
        // Padded rows read token 0 and their logits are computed but not returned.
        ids.resize(rows, 0);
        let pick: Vec<i32> = if graph {
            (0..rows as i32).collect()
        } else {
            picked.to_vec()
        };
        let logit_rows = pick.len();
        let grow = self
            .bufs
            .as_ref()
            .is_none_or(|b| b.rows < rows || b.logit_rows < logit_rows);
        if grow {
            let (old_rows, old_logits) = self
                .bufs
                .as_ref()
                .map_or((0, 0), |b| (b.rows, b.logit_rows));
            let cap_rows = rows.max(old_rows).next_power_of_two();
            let cap_logits = logit_rows.max(old_logits).next_power_of_two();
            // The old buffers go first, so the peak holds one set.
            self.bufs = None;
            self.bufs = Some(StepBuffers::new(
                &self.gpu, &self.dims, cap_rows, cap_logits,
            )?);
            moved = true;
        }
        // Sized by the model's head count, not this rank's, so every rank grows (and
        // recaptures) at the same steps.
        moved |= self.scratch.reserve(
            &self.gpu,
            rows * self.dims.heads.max(1) * self.attn_rows.splits.max(1),
            self.config.shape.head_dim,
        )?;
        let pool = cache.digest(&self.gpu);
        if pool != self.graph_pool {
            self.graph_pool = pool;
            moved = true;
        }
        if moved {
            self.graphs.clear();
        }
        let Some(b) = self.bufs.as_mut() else {
            return Err(CudaError::Shape {
                op: "forward",
                reason: "step buffers missing".into(),
            });
        };
        let stream = self.gpu.stream();
        stream.memcpy_htod(&ids, &mut b.ids.slice_mut(..rows))?;
        stream.memcpy_htod(&pick, &mut b.pick.slice_mut(..logit_rows))?;
        Ok((rows, logit_rows))
    }

    /// Captures [`Self::run`] for this shape as a graph (nothing runs).
    fn capture(
        &mut self,
        comm: &mut dyn DeviceComm,
        cache: &mut CudaKvCache,
        rows: usize,
        logit_rows: usize,
    ) -> Result<CudaGraph, CudaError> {
        let stream = self.gpu.stream().clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let ran = self.run(comm, cache, rows, logit_rows);
        // The capture ends even when a call inside it failed, leaving the stream usable.
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        ran?;
        ended?.ok_or_else(|| CudaError::Shape {
            op: "graph",
            reason: "the capture recorded nothing".into(),
        })
    }

    /// The kernels of one step over the prepared buffers: `rows` rows, the logits of the
    /// `logit_rows` rows in `pick`. Reads no host memory and allocates nothing, so it can
    /// be captured.
    // TODO(issue 14): split when the CUDA forward moves onto RankModel.
    #[allow(clippy::too_many_lines)]
    fn run(
        &mut self,
        comm: &mut dyn DeviceComm,
        cache: &mut CudaKvCache,
        t: usize,
        logit_rows: usize,
    ) -> Result<(), CudaError> {
        let Self {
            gpu,
            config,
            embed,
            embed_span,
            lm_head,
            reduce_embedding,
            gather_logits,
            final_norm,
            layers,
            rope,
            dims,
            bufs,
            attn_rows,
            scratch,
            span_starts,
            span_lens,
            ..
        } = self;
        let Some(b) = bufs.as_mut() else {
            return Err(CudaError::Shape {
                op: "forward",
                reason: "step buffers missing".into(),
            });
        };
        let (h, d) = (config.shape.hidden, config.shape.head_dim);
        let eps = config.rms_norm_eps;
        ops::embedding(gpu, &b.ids, t, embed, embed_span.start, &mut b.x)?;
        if *reduce_embedding {
            comm.all_reduce_sum(gpu, &mut b.x, t * h)?;
        }
        let mut pending = false;
        for (l, layer) in layers.iter().enumerate() {
            if pending {
                ops::add_rms_norm(
                    gpu,
                    &mut b.x,
                    &b.delta,
                    &layer.input_norm,
                    eps,
                    t,
                    &mut b.normed,
                )?;
            } else {
                ops::rms_norm(gpu, &b.x, &layer.input_norm, eps, t, &mut b.normed)?;
            }
            let (qw, kvw) = (layer.q_heads * d, layer.kv_heads * d);
            let width = qw + 2 * kvw;
            ops::gemm(gpu, &b.normed, t, &layer.qkv, &mut b.qkv, &mut b.x_half)?;
            if let Some(bias) = &layer.qkv_bias {
                ops::add_bias(gpu, &mut b.qkv, bias, t)?;
            }
            if kvw > 0 {
                // q and k heads sit side by side (columns 0..qw, then qw..qw + kvw):
                // one launch rotates both.
                ops::rope(
                    gpu,
                    &mut b.qkv,
                    width,
                    0,
                    layer.q_heads + layer.kv_heads,
                    attn_rows.positions(),
                    &attn_rows.host_positions,
                    rope,
                )?;
                ops::kv_write(
                    gpu,
                    &b.qkv,
                    width,
                    qw,
                    qw + kvw,
                    kvw,
                    attn_rows,
                    &mut cache.k[l],
                    &mut cache.v[l],
                )?;
                let shape = AttentionShape {
                    head_dim: d,
                    kv_heads: layer.kv_heads,
                    block_size: cache.block_size,
                    window: config.sliding_window,
                    kv_index: &layer.kv_index,
                    q_heads: layer.q_heads,
                };
                ops::paged_attention(
                    gpu,
                    &b.qkv,
                    width,
                    0,
                    &cache.k[l],
                    &cache.v[l],
                    attn_rows,
                    &shape,
                    scratch,
                    &mut b.attn,
                )?;
            }
            ops::gemm(gpu, &b.attn, t, &layer.o, &mut b.delta, &mut b.x_half)?;
            if layer.reduce_attention {
                comm.all_reduce_sum(gpu, &mut b.delta, t * h)?;
            }
            ops::add_rms_norm(
                gpu,
                &mut b.x,
                &b.delta,
                &layer.post_norm,
                eps,
                t,
                &mut b.normed,
            )?;
            ops::gemm(
                gpu,
                &b.normed,
                t,
                &layer.gate_up,
                &mut b.gate_up,
                &mut b.x_half,
            )?;
            ops::silu_mul(gpu, &b.gate_up, layer.inter, t, &mut b.act)?;
            ops::gemm(gpu, &b.act, t, &layer.down, &mut b.delta, &mut b.x_half)?;
            if layer.reduce_mlp {
                comm.all_reduce_sum(gpu, &mut b.delta, t * h)?;
            }
            pending = true;
        }
        if pending {
            ops::add(gpu, &mut b.x, &b.delta, t * h)?;
        }
        if logit_rows == 0 {
            return Ok(());
        }
        ops::gather_rows(gpu, &b.x, h, &b.pick, logit_rows, &mut b.picked)?;
        ops::rms_norm(gpu, &b.picked, final_norm, eps, logit_rows, &mut b.normed)?;
        let head = lm_head.as_ref().unwrap_or(embed);
        ops::gemm(
            gpu,
            &b.normed,
            logit_rows,
            head,
            &mut b.local,
            &mut b.x_half,
        )?;
        if *gather_logits {
            // Every rank sends the same count (its slice padded to the longest), then the
            // slices are put back in vocabulary order, on the device.
            let count = logit_rows * dims.span;
            comm.all_gather_device(gpu, &b.local, count, &mut b.gathered)?;
            ops::unpad_logits(
                gpu,
                &b.gathered,
                span_starts,
                span_lens,
                dims.world,
                count,
                logit_rows,
                dims.vocab,
                &mut b.full,
            )?;
        }
        Ok(())
    }

    /// The first `n_rows` rows of the step's logits, full vocabulary, in a new device
    /// buffer.
    fn logits(&self, n_rows: usize) -> Result<DeviceLogits, CudaError> {
        let vocab = self.config.shape.vocab;
        let Some(b) = self.bufs.as_ref() else {
            return Err(CudaError::Shape {
                op: "forward",
                reason: "step buffers missing".into(),
            });
        };
        let src = if self.gather_logits {
            &b.full
        } else {
            &b.local
        };
        let mut data = self.gpu.scratch(n_rows * vocab)?;
        self.gpu
            .stream()
            .memcpy_dtod(&src.slice(..n_rows * vocab), &mut data.slice_mut(..))?;
        Ok(DeviceLogits {
            rows: n_rows,
            vocab,
            data,
        })
    }
}

/// One weight of `rank`'s slice from the files (tied heads read the embedding).
fn load_weight(
    files: &WeightFiles,
    shape: &tessera_plan::ModelShape,
    plan: &ShardPlan,
    rank: usize,
    layer: usize,
    kind: WeightKind,
) -> Result<Vec<f32>, CudaError> {
    let name = match (kind, shape.tied_embeddings) {
        (WeightKind::LmHead, true) => WeightKind::Embedding.hf_name(0),
        _ => kind.hf_name(layer),
    };
    Ok(files.load(&name, kind.full_shape(shape), plan.role(layer, kind, rank))?)
}
