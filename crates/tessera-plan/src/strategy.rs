//! Strategies: functions from (model shape, rank count) to a [`ShardPlan`].

use crate::error::PlanError;
use crate::plan::{AttentionSharding, DimSharding, HeadShard, LayerPlan, ShardPlan, PLAN_FORMAT};
use crate::shape::ModelShape;
use crate::span::{even_spans, kv_span_for};

/// A named way to split a model across ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Column-parallel q/k/v and gate/up, row-parallel o and down, vocabulary-parallel
    /// embedding and output head: one all-reduce after attention and one after the MLP.
    Megatron,
    /// Attention split as in `megatron`, MLP computed whole on every rank.
    AttnTpMlpReplicated,
    /// MLP split as in `megatron`, attention computed whole on every rank.
    MlpTpAttnReplicated,
    /// Every rank computes everything (the data-parallel baseline); no collective.
    Replicated,
}

impl Strategy {
    /// Names accepted by [`Strategy::parse`].
    pub const NAMES: [&'static str; 4] = [
        "megatron",
        "attn-tp-mlp-replicated",
        "mlp-tp-attn-replicated",
        "replicated",
    ];

    /// Parses a strategy name as written on the command line.
    pub fn parse(name: &str) -> Result<Self, PlanError> {
        match name {
            "megatron" => Ok(Self::Megatron),
            "attn-tp-mlp-replicated" => Ok(Self::AttnTpMlpReplicated),
            "mlp-tp-attn-replicated" => Ok(Self::MlpTpAttnReplicated),
            "replicated" => Ok(Self::Replicated),
            other => Err(PlanError::UnknownStrategy(other.to_string())),
        }
    }

    /// The strategy's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Megatron => "megatron",
            Self::AttnTpMlpReplicated => "attn-tp-mlp-replicated",
            Self::MlpTpAttnReplicated => "mlp-tp-attn-replicated",
            Self::Replicated => "replicated",
        }
    }

    /// Builds this strategy's plan for `shape` on `world` ranks.
    ///
    /// Query heads are split as evenly as possible into contiguous ranges; each rank holds
    /// the key/value heads its query heads read, so a group split between two ranks has its
    /// key/value head replicated on both (SmolLM2's 9 heads in 3 groups on 2 ranks: 5 + 4
    /// query heads, key/value head 1 on both ranks). When ranks divide the key/value heads
    /// this is the usual group-aligned split with no replication.
    pub fn plan(self, shape: &ModelShape, world: usize) -> Result<ShardPlan, PlanError> {
        if world == 0 {
            return Err(PlanError::ZeroRanks);
        }
        let split_attn = matches!(self, Self::Megatron | Self::AttnTpMlpReplicated) && world > 1;
        let split_mlp = matches!(self, Self::Megatron | Self::MlpTpAttnReplicated) && world > 1;
        let split_vocab = self == Self::Megatron && world > 1;
        let attention = if split_attn {
            AttentionSharding::Heads {
                ranks: even_spans(shape.heads, world)
                    .into_iter()
                    .map(|q| HeadShard {
                        q_heads: q,
                        kv_heads: kv_span_for(q, shape.heads, shape.kv_heads),
                    })
                    .collect(),
            }
        } else {
            AttentionSharding::Replicated
        };
        let mlp = if split_mlp {
            DimSharding::Split {
                spans: even_spans(shape.intermediate, world),
            }
        } else {
            DimSharding::Replicated
        };
        let vocab = if split_vocab {
            DimSharding::Split {
                spans: even_spans(shape.vocab, world),
            }
        } else {
            DimSharding::Replicated
        };
        let plan = ShardPlan {
            format: PLAN_FORMAT,
            strategy: self.name().to_string(),
            world_size: world,
            model: shape.clone(),
            embedding: vocab.clone(),
            lm_head: vocab,
            layers: vec![LayerPlan { attention, mlp }; shape.layers],
        };
        plan.validate()?;
        Ok(plan)
    }
}
