//! `ShardPlan`: for every weight, which slice each rank holds, and the collectives that follow.
//!
//! A plan is data: it is printed, saved as JSON, edited by hand and loaded again. The model
//! code never decides a split itself; it asks the plan for each weight's [`Role`] on its
//! rank, and the collectives it runs are derived from the same plan ([`ShardPlan::collectives`]).
//!
//! Column and row splits of a Hugging Face `[out, in]` weight:
//!
//! ```text
//!   column-parallel (q/k/v, gate/up)        row-parallel (o, down): partial sums
//!   SplitRows: each rank holds out-rows      PartialSum: each rank holds in-columns
//!   +-----------+                            +-----+-----+
//!   |  rank 0   |  y0 = x W0^T               |  r0 | r1  |   y = x0 W0^T + x1 W1^T
//!   +-----------+                            |     |     |       (all-reduce)
//!   |  rank 1   |  y1 = x W1^T               +-----+-----+
//!   +-----------+
//! ```

use serde::{Deserialize, Serialize};

use crate::collective::{Collective, CollectiveOp, CollectiveSite, LayerHalf};
use crate::error::PlanError;
use crate::role::{Role, WeightKind};
use crate::shape::ModelShape;
use crate::span::{kv_span_for, Span};

/// Version of the JSON layout written by [`ShardPlan::to_json`].
pub const PLAN_FORMAT: u32 = 1;

/// The query and key/value heads one rank computes in one attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadShard {
    /// Query heads held by the rank.
    pub q_heads: Span,
    /// Key/value heads held by the rank; a head may be held by several ranks (replicated).
    pub kv_heads: Span,
}

/// How an attention layer is spread over ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttentionSharding {
    /// Every rank computes the whole layer; no collective follows.
    Replicated,
    /// Heads split across ranks (one entry per rank); an all-reduce follows `o_proj`.
    Heads {
        /// One entry per rank.
        ranks: Vec<HeadShard>,
    },
}

/// How an MLP layer (or the vocabulary of the embedding / output head) is spread over ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DimSharding {
    /// Every rank holds the whole dimension.
    Replicated,
    /// Contiguous per-rank spans that partition the dimension (one entry per rank).
    Split {
        /// One span per rank, in rank order.
        spans: Vec<Span>,
    },
}

impl DimSharding {
    /// The span of the dimension (of length `len`) that `rank` holds.
    pub fn span(&self, rank: usize, len: usize) -> Span {
        match self {
            Self::Replicated => Span::full(len),
            Self::Split { spans } => spans.get(rank).copied().unwrap_or(Span::new(0, 0)),
        }
    }

    /// True when the dimension is split (a collective follows).
    pub fn is_split(&self) -> bool {
        matches!(self, Self::Split { .. })
    }
}

/// How one transformer block is spread over ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPlan {
    /// The attention half of the block.
    pub attention: AttentionSharding,
    /// The MLP half of the block (split along the intermediate dimension).
    pub mlp: DimSharding,
}

/// The complete sharding of one model over `world_size` ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// Layout version of the JSON form.
    pub format: u32,
    /// Name of the strategy that produced the plan (free text for hand-made plans).
    pub strategy: String,
    /// Number of ranks.
    pub world_size: usize,
    /// Shape of the model the plan was made for.
    pub model: ModelShape,
    /// Vocabulary split of the embedding.
    pub embedding: DimSharding,
    /// Vocabulary split of the output head.
    pub lm_head: DimSharding,
    /// One entry per transformer block.
    pub layers: Vec<LayerPlan>,
    /// Sequence parallelism (`megatron-sp`): between the split layers each rank keeps only
    /// its share of the token rows (residual stream and norms), a reduce-scatter replaces
    /// each all-reduce and an all-gather of the normed rows feeds the next split layer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sequence_parallel: bool,
}

impl ShardPlan {
    /// The role of weight `kind` (in block `layer`; ignored for global weights) on `rank`.
    pub fn role(&self, layer: usize, kind: WeightKind, rank: usize) -> Role {
        let m = &self.model;
        let layer_plan = self.layers.get(layer);
        let heads = |rank: usize| match layer_plan.map(|l| &l.attention) {
            Some(AttentionSharding::Heads { ranks }) => ranks.get(rank).copied(),
            _ => None,
        };
        let mlp = layer_plan.map(|l| &l.mlp);
        match kind {
            WeightKind::Embedding => match &self.embedding {
                DimSharding::Replicated => Role::Replicated,
                s => Role::SplitRows {
                    span: s.span(rank, m.vocab),
                },
            },
            WeightKind::LmHead => match &self.lm_head {
                DimSharding::Replicated => Role::Replicated,
                s => Role::SplitRows {
                    span: s.span(rank, m.vocab),
                },
            },
            WeightKind::QProj | WeightKind::QBias => match heads(rank) {
                Some(h) => Role::SplitRows {
                    span: h.q_heads.scaled(m.head_dim),
                },
                None => Role::Replicated,
            },
            WeightKind::KProj | WeightKind::VProj | WeightKind::KBias | WeightKind::VBias => {
                match heads(rank) {
                    Some(h) => Role::SplitRows {
                        span: h.kv_heads.scaled(m.head_dim),
                    },
                    None => Role::Replicated,
                }
            }
            WeightKind::OProj => match heads(rank) {
                Some(h) => Role::PartialSum {
                    span: h.q_heads.scaled(m.head_dim),
                },
                None => Role::Replicated,
            },
            WeightKind::GateProj | WeightKind::UpProj => match mlp {
                Some(DimSharding::Split { spans }) => Role::SplitRows {
                    span: spans.get(rank).copied().unwrap_or(Span::new(0, 0)),
                },
                _ => Role::Replicated,
            },
            WeightKind::DownProj => match mlp {
                Some(DimSharding::Split { spans }) => Role::PartialSum {
                    span: spans.get(rank).copied().unwrap_or(Span::new(0, 0)),
                },
                _ => Role::Replicated,
            },
            WeightKind::InputNorm | WeightKind::PostAttentionNorm | WeightKind::FinalNorm => {
                Role::Replicated
            }
        }
    }

    /// The query and key/value heads `rank` computes in `layer` (all heads when replicated).
    pub fn heads(&self, layer: usize, rank: usize) -> HeadShard {
        match self.layers.get(layer).map(|l| &l.attention) {
            Some(AttentionSharding::Heads { ranks }) => {
                ranks.get(rank).copied().unwrap_or(HeadShard {
                    q_heads: Span::new(0, 0),
                    kv_heads: Span::new(0, 0),
                })
            }
            _ => HeadShard {
                q_heads: Span::full(self.model.heads),
                kv_heads: Span::full(self.model.kv_heads),
            },
        }
    }

    /// Every collective the forward pass runs, in execution order.
    ///
    /// A split embedding is summed (each rank fills the rows of its vocabulary span, zeros
    /// elsewhere); a head- or intermediate-split layer ends in an all-reduce of its partial
    /// sums; a split output head gathers its logits. A world of one needs no collective.
    pub fn collectives(&self) -> Vec<Collective> {
        let mut out = Vec::new();
        if self.world_size <= 1 {
            return out;
        }
        let h = self.model.hidden;
        let sp = self.sequence_parallel;
        let reduce = if sp {
            CollectiveOp::ReduceScatter
        } else {
            CollectiveOp::AllReduce
        };
        let push = |out: &mut Vec<Collective>, site, op, elems_per_token| {
            out.push(Collective {
                site,
                op,
                elems_per_token,
            })
        };
        if self.embedding.is_split() {
            push(&mut out, CollectiveSite::Embedding, reduce, h);
        }
        for (layer, lp) in self.layers.iter().enumerate() {
            if matches!(lp.attention, AttentionSharding::Heads { .. }) {
                if sp {
                    let site = CollectiveSite::Gather {
                        layer,
                        half: LayerHalf::Attention,
                    };
                    push(&mut out, site, CollectiveOp::AllGather, h);
                }
                push(&mut out, CollectiveSite::Attention { layer }, reduce, h);
            }
            if lp.mlp.is_split() {
                if sp {
                    let site = CollectiveSite::Gather {
                        layer,
                        half: LayerHalf::Mlp,
                    };
                    push(&mut out, site, CollectiveOp::AllGather, h);
                }
                push(&mut out, CollectiveSite::Mlp { layer }, reduce, h);
            }
        }
        if sp {
            push(
                &mut out,
                CollectiveSite::FinalRows,
                CollectiveOp::AllGather,
                h,
            );
        }
        if self.lm_head.is_split() {
            push(
                &mut out,
                CollectiveSite::LmHead,
                CollectiveOp::AllGather,
                self.model.vocab,
            );
        }
        out
    }

    /// Number of parameters `rank` holds (a tied embedding used twice with one split counts once).
    pub fn rank_parameters(&self, rank: usize) -> usize {
        let m = &self.model;
        let mut total = 0usize;
        let count = |kind: WeightKind, layer: usize| {
            let [r, c] = self.role(layer, kind, rank).local_shape(kind.full_shape(m));
            r * c
        };
        total += count(WeightKind::Embedding, 0);
        let lm_shares_embedding = m.tied_embeddings && self.lm_head == self.embedding;
        if !lm_shares_embedding {
            total += count(WeightKind::LmHead, 0);
        }
        total += count(WeightKind::FinalNorm, 0);
        for layer in 0..self.layers.len() {
            for kind in WeightKind::LAYER {
                if kind.is_bias() && !m.qkv_bias {
                    continue;
                }
                total += count(kind, layer);
            }
        }
        total
    }

    /// The plan as pretty JSON (the form `--plan FILE` reads back).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses a plan from JSON and validates it against `model` (when given).
    pub fn from_json(text: &str, model: Option<&ModelShape>) -> Result<Self, PlanError> {
        let plan: ShardPlan =
            serde_json::from_str(text).map_err(|e| PlanError::Json(e.to_string()))?;
        if let Some(m) = model {
            if &plan.model != m {
                return Err(PlanError::ModelMismatch {
                    plan: format!("{:?}", plan.model),
                    model: format!("{m:?}"),
                });
            }
        }
        plan.validate()?;
        Ok(plan)
    }

    /// Checks that the plan is complete and consistent; errors name the weight and the rank.
    pub fn validate(&self) -> Result<(), PlanError> {
        let m = &self.model;
        if self.format != PLAN_FORMAT {
            return Err(PlanError::Format(self.format));
        }
        if self.world_size == 0 {
            return Err(PlanError::ZeroRanks);
        }
        if m.heads == 0 || m.kv_heads == 0 || !m.heads.is_multiple_of(m.kv_heads) {
            return Err(PlanError::BadShape(format!(
                "{} query heads cannot be grouped over {} key/value heads",
                m.heads, m.kv_heads
            )));
        }
        if self.layers.len() != m.layers {
            return Err(PlanError::LayerCount {
                plan: self.layers.len(),
                model: m.layers,
            });
        }
        check_dim(
            &self.embedding,
            self.world_size,
            m.vocab,
            "model.embed_tokens.weight (vocabulary)",
        )?;
        check_dim(
            &self.lm_head,
            self.world_size,
            m.vocab,
            "lm_head.weight (vocabulary)",
        )?;
        if self.sequence_parallel {
            for (layer, lp) in self.layers.iter().enumerate() {
                let attention_split = matches!(lp.attention, AttentionSharding::Heads { .. });
                if self.world_size > 1 && !(attention_split && lp.mlp.is_split()) {
                    return Err(PlanError::SequenceParallel { layer });
                }
            }
        }
        for (layer, lp) in self.layers.iter().enumerate() {
            let what = format!("model.layers.{layer}.mlp (intermediate)");
            check_dim(&lp.mlp, self.world_size, m.intermediate, &what)?;
            if let AttentionSharding::Heads { ranks } = &lp.attention {
                let what = format!("model.layers.{layer}.self_attn (query heads)");
                let q: Vec<Span> = ranks.iter().map(|r| r.q_heads).collect();
                check_partition(&q, self.world_size, m.heads, &what)?;
                for (rank, shard) in ranks.iter().enumerate() {
                    let need = kv_span_for(shard.q_heads, m.heads, m.kv_heads);
                    if shard.kv_heads != need {
                        return Err(PlanError::KvHeads {
                            layer,
                            rank,
                            q_heads: shard.q_heads,
                            kv_heads: shard.kv_heads,
                            needed: need,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_dim(s: &DimSharding, world: usize, len: usize, what: &str) -> Result<(), PlanError> {
    match s {
        DimSharding::Replicated => Ok(()),
        DimSharding::Split { spans } => check_partition(spans, world, len, what),
    }
}

/// Spans must be one per rank, in order, covering `[0, len)` with no gap and no overlap.
fn check_partition(spans: &[Span], world: usize, len: usize, what: &str) -> Result<(), PlanError> {
    if spans.len() != world {
        return Err(PlanError::RankCount {
            what: what.to_string(),
            expected: world,
            got: spans.len(),
        });
    }
    let mut expected_start = 0usize;
    for (rank, s) in spans.iter().enumerate() {
        if s.end < s.start {
            return Err(PlanError::Reversed {
                what: what.to_string(),
                rank,
                span: *s,
            });
        }
        if s.start != expected_start {
            return Err(if s.start < expected_start {
                PlanError::Overlap {
                    what: what.to_string(),
                    rank,
                    start: s.start,
                    previous_end: expected_start,
                }
            } else {
                PlanError::Gap {
                    what: what.to_string(),
                    rank,
                    start: s.start,
                    previous_end: expected_start,
                }
            });
        }
        expected_start = s.end;
    }
    if expected_start != len {
        return Err(PlanError::Coverage {
            what: what.to_string(),
            end: expected_start,
            len,
        });
    }
    Ok(())
}
