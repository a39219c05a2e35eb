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

use cudarc::driver::CudaSlice;
use tessera_model::{ModelConfig, SeqInput, WeightFiles};
use tessera_plan::{AttentionSharding, ShardPlan, Span, WeightKind};

use crate::collective::DeviceComm;
use crate::device::Gpu;
use crate::error::{ensure, CudaError};
use crate::ops::{self, AttentionRows, AttentionShape, DeviceDtype, DeviceMatrix, DeviceRope};

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
/// `[block][slot][kv head][d]` in f32, as in `tessera_model::PagedKvCache`.
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
            k.push(gpu.zeros::<f32>(num_blocks * block_size * w)?);
            v.push(gpu.zeros::<f32>(num_blocks * block_size * w)?);
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

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
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
    lm_span: Span,
    reduce_embedding: bool,
    gather_logits: bool,
    lm_spans: Vec<Span>,
    final_norm: CudaSlice<f32>,
    layers: Vec<CudaLayer>,
    rope: DeviceRope,
    x_half: CudaSlice<u16>,
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
            let kind = if shape.tied_embeddings {
                WeightKind::Embedding
            } else {
                WeightKind::LmHead
            };
            // A tied head split differently from the embedding reads the embedding's rows.
            let head = match &source {
                WeightSource::Files(files) if shape.tied_embeddings => {
                    let data = files.load(
                        &kind.hf_name(0),
                        WeightKind::LmHead.full_shape(shape),
                        plan.role(0, WeightKind::LmHead, rank),
                    )?;
                    DeviceMatrix::upload(&gpu, &data, lm_span.len(), h, dtype)?
                }
                _ => matrix(&gpu, &[(0, WeightKind::LmHead)], lm_span.len(), h)?,
            };
            Some(head)
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
        let x_half = gpu.zeros::<u16>(1)?;
        gpu.synchronize()?;
        Ok(Self {
            config: config.clone(),
            embed,
            embed_span,
            lm_head,
            lm_span,
            reduce_embedding: plan.world_size > 1 && plan.embedding.is_split(),
            gather_logits: plan.world_size > 1 && plan.lm_head.is_split(),
            lm_spans: (0..plan.world_size)
                .map(|r| plan.lm_head.span(r, shape.vocab))
                .collect(),
            final_norm,
            layers,
            rope,
            x_half,
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

    /// Bytes a decode step must read at least: every weight once.
    pub fn bytes_per_step(&self) -> usize {
        self.weight_bytes()
    }

    /// Key/value width of each layer on this rank, for [`CudaKvCache::new`].
    pub fn kv_widths(&self) -> Vec<usize> {
        self.layers
            .iter()
            .map(|l| l.kv_heads * self.config.shape.head_dim)
            .collect()
    }

    /// Runs a batch of sequences' new tokens (see `tessera_model::SeqInput`), writing their
    /// keys and values into `cache`; returns the logits of the rows each sequence asks
    /// for, in sequence order, on the device.
    pub fn forward(
        &mut self,
        comm: &mut dyn DeviceComm,
        cache: &mut CudaKvCache,
        seqs: &[SeqInput<'_>],
    ) -> Result<DeviceLogits, CudaError> {
        let shape = self.config.shape.clone();
        let (h, vocab, d) = (shape.hidden, shape.vocab, shape.head_dim);
        let eps = self.config.rms_norm_eps;
        let gpu = &self.gpu;
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
            for &id in s.tokens {
                ensure((id as usize) < vocab, "forward", || {
                    format!("token id {id} is not below the vocabulary size {vocab}")
                })?;
                ids.push(id as i32);
            }
            spec.push((s.start, s.tokens.len(), s.block_table));
        }
        let t = ids.len();
        if t == 0 {
            return Ok(DeviceLogits {
                rows: 0,
                vocab,
                data: gpu.zeros::<f32>(1)?,
            });
        }
        let rows = AttentionRows::new(gpu, &spec, cache.block_size, cache.num_blocks)?;
        let dids = gpu.upload(&ids)?;
        // Written whole by the embedding kernel.
        let mut x = gpu.scratch(t * h)?;
        ops::embedding(gpu, &dids, t, &self.embed, self.embed_span.start, &mut x)?;
        if self.reduce_embedding {
            comm.all_reduce_sum(gpu, &mut x, t * h)?;
        }
        let max_width = self
            .layers
            .iter()
            .map(|l| (l.q_heads + 2 * l.kv_heads) * d)
            .max()
            .unwrap_or(0);
        let max_q = self.layers.iter().map(|l| l.q_heads * d).max().unwrap_or(0);
        let max_inter = self.layers.iter().map(|l| l.inter).max().unwrap_or(0);
        // Each buffer's rows are written (norm, GEMM, silu_mul) before they are read; `attn`
        // stays zeroed for a layer whose rank holds no key/value heads.
        let mut normed = gpu.scratch(t * h)?;
        let mut qkv = gpu.scratch(t * max_width)?;
        let mut attn = gpu.zeros::<f32>(t * max_q)?;
        let mut delta = gpu.scratch(t * h)?;
        let mut gate_up = gpu.scratch(t * 2 * max_inter)?;
        let mut act = gpu.scratch(t * max_inter)?;
        let mut pending = false;
        for (l, layer) in self.layers.iter().enumerate() {
            if pending {
                ops::add_rms_norm(gpu, &mut x, &delta, &layer.input_norm, eps, t, &mut normed)?;
            } else {
                ops::rms_norm(gpu, &x, &layer.input_norm, eps, t, &mut normed)?;
            }
            let (qw, kvw) = (layer.q_heads * d, layer.kv_heads * d);
            let width = qw + 2 * kvw;
            ops::gemm(gpu, &normed, t, &layer.qkv, &mut qkv, &mut self.x_half)?;
            if let Some(b) = &layer.qkv_bias {
                ops::add_bias(gpu, &mut qkv, b, t)?;
            }
            if kvw > 0 {
                ops::rope(
                    gpu,
                    &mut qkv,
                    width,
                    0,
                    layer.q_heads,
                    rows.positions(),
                    &rows.host_positions,
                    &self.rope,
                )?;
                ops::rope(
                    gpu,
                    &mut qkv,
                    width,
                    qw,
                    layer.kv_heads,
                    rows.positions(),
                    &rows.host_positions,
                    &self.rope,
                )?;
                ops::kv_write(
                    gpu,
                    &qkv,
                    width,
                    qw,
                    qw + kvw,
                    kvw,
                    &rows,
                    &mut cache.k[l],
                    &mut cache.v[l],
                )?;
                let shape = AttentionShape {
                    head_dim: d,
                    kv_heads: layer.kv_heads,
                    block_size: cache.block_size,
                    window: self.config.sliding_window,
                    kv_index: &layer.kv_index,
                    q_heads: layer.q_heads,
                };
                ops::paged_attention(
                    gpu,
                    &qkv,
                    width,
                    0,
                    &cache.k[l],
                    &cache.v[l],
                    &rows,
                    &shape,
                    &mut attn,
                )?;
            }
            ops::gemm(gpu, &attn, t, &layer.o, &mut delta, &mut self.x_half)?;
            if layer.reduce_attention {
                comm.all_reduce_sum(gpu, &mut delta, t * h)?;
            }
            ops::add_rms_norm(gpu, &mut x, &delta, &layer.post_norm, eps, t, &mut normed)?;
            ops::gemm(
                gpu,
                &normed,
                t,
                &layer.gate_up,
                &mut gate_up,
                &mut self.x_half,
            )?;
            ops::silu_mul(gpu, &gate_up, layer.inter, t, &mut act)?;
            ops::gemm(gpu, &act, t, &layer.down, &mut delta, &mut self.x_half)?;
            if layer.reduce_mlp {
                comm.all_reduce_sum(gpu, &mut delta, t * h)?;
            }
            pending = true;
        }
        if pending {
            ops::add(gpu, &mut x, &delta, t * h)?;
        }

        let picked_rows = tessera_model::logit_rows(seqs);
        let n_rows = picked_rows.len();
        if n_rows == 0 {
            return Ok(DeviceLogits {
                rows: 0,
                vocab,
                data: gpu.zeros::<f32>(1)?,
            });
        }
        let mut picked = gpu.zeros::<f32>(n_rows * h)?;
        for (i, &r) in picked_rows.iter().enumerate() {
            gpu.stream().memcpy_dtod(
                &x.slice(r * h..(r + 1) * h),
                &mut picked.slice_mut(i * h..(i + 1) * h),
            )?;
        }
        ops::rms_norm(gpu, &picked, &self.final_norm, eps, n_rows, &mut normed)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let local_vocab = self.lm_span.len();
        let mut local = gpu.zeros::<f32>(n_rows * local_vocab)?;
        ops::gemm(gpu, &normed, n_rows, head, &mut local, &mut self.x_half)?;
        if !self.gather_logits {
            return Ok(DeviceLogits {
                rows: n_rows,
                vocab,
                data: local,
            });
        }
        // [rank][row][rank's vocabulary slice] -> [row][vocab], on the host.
        let gathered =
            comm.all_gather_to_host(gpu, &local, n_rows * local_vocab, n_rows * vocab)?;
        let mut out = vec![0.0f32; n_rows * vocab];
        for span in &self.lm_spans {
            let len = span.len();
            for r in 0..n_rows {
                let src = &gathered[n_rows * span.start + r * len..][..len];
                out[r * vocab + span.start..][..len].copy_from_slice(src);
            }
        }
        Ok(DeviceLogits {
            rows: n_rows,
            vocab,
            data: gpu.upload(&out)?,
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
