//! The work of one step on one rank: FLOPs and bytes per layer type, from the plan's slices.
//!
//! Counting rules (2 FLOPs per multiply-add; norms, RoPE, SiLU and biases are left out of
//! FLOPs as they are a fraction of a percent):
//!
//! ```text
//!   attention  2 T hidden (q + 2 kv) hd          q/k/v projections of the rank's heads
//!            + 4 hd q keys                       scores and weighted values, per query
//!            + 2 T q hd hidden                   output projection (partial sum)
//!   mlp        6 T hidden I_r                    gate, up, down over the rank's span
//!   lm_head    2 R hidden V_r                    R rows of logits over the vocabulary span
//!   embedding  0                                 a row lookup
//! ```
//!
//! `keys` is `context + 1` per query in decode and `L (L + 1) / 2` per sequence in prefill
//! (causal). Bytes are weights read once per step, key/value cache reads and writes, and
//! activations written and read back once per matmul.

use serde::{Deserialize, Serialize};

use crate::cost::error::CostError;
use crate::ShardPlan;

/// Which pass a workload measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Each sequence processes its whole prompt of `context` tokens from an empty cache.
    Prefill,
    /// Each sequence adds one token after `context` cached tokens.
    Decode,
}

impl Phase {
    /// Parses `prefill` or `decode`.
    pub fn parse(name: &str) -> Result<Self, CostError> {
        match name {
            "prefill" => Ok(Self::Prefill),
            "decode" => Ok(Self::Decode),
            other => Err(CostError::UnknownPhase(other.to_string())),
        }
    }

    /// The phase's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// One step to predict: a batch of sequences in one phase.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Prefill or decode.
    pub phase: Phase,
    /// Sequences in the step.
    pub batch: usize,
    /// Prompt length (prefill) or tokens already cached per sequence (decode).
    pub context: usize,
    /// Bytes per weight (4 for f32, 2 for bf16).
    pub weight_bytes: usize,
    /// Bytes per activation and per key/value cache element (4: this engine keeps f32).
    pub activation_bytes: usize,
}

impl Workload {
    /// A workload with f32 activations.
    pub fn new(phase: Phase, batch: usize, context: usize, weight_bytes: usize) -> Self {
        Self {
            phase,
            batch,
            context,
            weight_bytes,
            activation_bytes: 4,
        }
    }

    /// Checks that the step computes at least one token.
    pub fn validate(&self) -> Result<(), CostError> {
        if self.batch == 0 {
            return Err(CostError::BadWorkload(
                "the batch must hold at least 1 sequence".into(),
            ));
        }
        if self.phase == Phase::Prefill && self.context == 0 {
            return Err(CostError::BadWorkload(
                "a prefill needs a prompt of at least 1 token (--context)".into(),
            ));
        }
        if self.weight_bytes == 0 || self.activation_bytes == 0 {
            return Err(CostError::BadWorkload(
                "bytes per weight and per activation must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Token rows computed in the step.
    pub fn tokens(&self) -> usize {
        match self.phase {
            Phase::Prefill => self.batch * self.context,
            Phase::Decode => self.batch,
        }
    }

    /// Rows that need logits: the last position of every sequence.
    pub fn logit_rows(&self) -> usize {
        self.batch
    }

    /// (query, key) pairs scored per query head in the step.
    fn query_key_pairs(&self) -> u64 {
        let b = self.batch as u64;
        let c = self.context as u64;
        match self.phase {
            Phase::Prefill => b * c * (c + 1) / 2,
            Phase::Decode => b * (c + 1),
        }
    }

    /// Key/value positions read per key/value head in the step (writes excluded).
    fn kv_positions_read(&self) -> u64 {
        let b = self.batch as u64;
        let c = self.context as u64;
        match self.phase {
            // One pass over each prompt's keys (the fresh keys, read back once).
            Phase::Prefill => b * c,
            Phase::Decode => b * (c + 1),
        }
    }
}

/// The four kinds of layer the cost is broken down by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    /// Token embedding lookup.
    Embedding,
    /// Every block's attention half (input norm, q/k/v, attention, output projection).
    Attention,
    /// Every block's MLP half (post-attention norm, gate/up, down).
    Mlp,
    /// Final norm and output head.
    LmHead,
}

impl LayerType {
    /// All layer types in forward order.
    pub const ALL: [LayerType; 4] = [Self::Embedding, Self::Attention, Self::Mlp, Self::LmHead];

    /// The layer type's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Embedding => "embedding",
            Self::Attention => "attention",
            Self::Mlp => "mlp",
            Self::LmHead => "lm_head",
        }
    }
}

/// FLOPs and bytes one rank spends on one layer type in one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    /// Floating-point operations (2 per multiply-add).
    pub flops: u64,
    /// Weight bytes read.
    pub weight_bytes: u64,
    /// Key/value cache bytes read and written.
    pub kv_bytes: u64,
    /// Activation bytes written and read.
    pub activation_bytes: u64,
}

impl Work {
    /// Every byte of memory traffic.
    pub fn memory_bytes(&self) -> u64 {
        self.weight_bytes + self.kv_bytes + self.activation_bytes
    }

    /// Element-wise sum.
    pub fn add(&self, o: &Work) -> Work {
        Work {
            flops: self.flops + o.flops,
            weight_bytes: self.weight_bytes + o.weight_bytes,
            kv_bytes: self.kv_bytes + o.kv_bytes,
            activation_bytes: self.activation_bytes + o.activation_bytes,
        }
    }
}

/// The work of `rank` on `layer_type` (summed over all blocks) for one step of `w`.
pub fn rank_work(plan: &ShardPlan, rank: usize, layer_type: LayerType, w: &Workload) -> Work {
    let m = &plan.model;
    let (h, hd) = (m.hidden as u64, m.head_dim as u64);
    let t = w.tokens() as u64;
    let (wb, ab) = (w.weight_bytes as u64, w.activation_bytes as u64);
    match layer_type {
        LayerType::Embedding => {
            let v_r = plan.embedding.span(rank, m.vocab).len() as u64;
            // Rows of the rank's vocabulary span that the step looks up, on average.
            let rows = (t * v_r).div_ceil(m.vocab.max(1) as u64);
            Work {
                flops: 0,
                weight_bytes: rows * h * wb,
                kv_bytes: 0,
                activation_bytes: t * h * ab,
            }
        }
        LayerType::Attention => {
            let mut sum = Work::default();
            for layer in 0..plan.layers.len() {
                let heads = plan.heads(layer, rank);
                let (q, kv) = (heads.q_heads.len() as u64, heads.kv_heads.len() as u64);
                let qkv = (q + 2 * kv) * hd;
                let bias = if m.qkv_bias { qkv } else { 0 };
                let layer_work = Work {
                    flops: 2 * t * h * qkv + 4 * hd * q * w.query_key_pairs() + 2 * t * q * hd * h,
                    weight_bytes: (h * qkv + bias + q * hd * h + h) * wb,
                    kv_bytes: (w.kv_positions_read() + t) * 2 * kv * hd * ab,
                    // x in, q/k/v out and back in, context out and back in, partial sum out.
                    activation_bytes: t * (2 * h + 2 * qkv + 2 * q * hd) * ab,
                };
                sum = sum.add(&layer_work);
            }
            sum
        }
        LayerType::Mlp => {
            let mut sum = Work::default();
            for lp in &plan.layers {
                let i_r = lp.mlp.span(rank, m.intermediate).len() as u64;
                let layer_work = Work {
                    flops: 6 * t * h * i_r,
                    weight_bytes: (3 * h * i_r + h) * wb,
                    kv_bytes: 0,
                    // x in, gate|up out and in, activation out and in, partial sum out.
                    activation_bytes: t * (2 * h + 6 * i_r) * ab,
                };
                sum = sum.add(&layer_work);
            }
            sum
        }
        LayerType::LmHead => {
            let v_r = plan.lm_head.span(rank, m.vocab).len() as u64;
            let r = w.logit_rows() as u64;
            Work {
                flops: 2 * r * h * v_r,
                weight_bytes: (v_r * h + h) * wb,
                kv_bytes: 0,
                activation_bytes: r * (h + v_r) * ab,
            }
        }
    }
}
