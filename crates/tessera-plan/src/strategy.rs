//! Strategies: functions from (model shape, rank count) to a [`ShardPlan`].

use crate::error::PlanError;
use crate::reduce::even_unit_spans;
use crate::shape::ModelShape;
use crate::span::{kv_span_for, weighted_spans, Span};
use crate::{AttentionSharding, DimSharding, HeadShard, LayerPlan, ShardPlan, PLAN_FORMAT};

/// A named way to split a model across ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Column-parallel q/k/v and gate/up, row-parallel o and down, vocabulary-parallel
    /// embedding and output head: one all-reduce after attention and one after the MLP.
    Megatron,
    /// `megatron` with sequence parallelism: reduce-scatter after the row-parallel layers,
    /// residual and norms on each rank's share of the token rows, all-gather before the
    /// column-parallel layers. Same bytes per token reduced, 1/N of the norm work.
    MegatronSp,
    /// Attention split as in `megatron`, MLP computed whole on every rank.
    AttnTpMlpReplicated,
    /// MLP split as in `megatron`, attention computed whole on every rank.
    MlpTpAttnReplicated,
    /// Every rank computes everything (the data-parallel baseline); no collective.
    Replicated,
    /// `megatron` with uneven splits sized by each rank's memory (mixed devices, given
    /// with `--rank-memory`); equal memories give splits close to `megatron`'s.
    MemoryBalanced,
}

impl Strategy {
    /// Names accepted by [`Strategy::parse`].
    pub const NAMES: [&'static str; 6] = [
        "megatron",
        "megatron-sp",
        "attn-tp-mlp-replicated",
        "mlp-tp-attn-replicated",
        "replicated",
        "memory-balanced",
    ];

    /// Every strategy, in the order of [`Strategy::NAMES`].
    pub const ALL: [Strategy; 6] = [
        Self::Megatron,
        Self::MegatronSp,
        Self::AttnTpMlpReplicated,
        Self::MlpTpAttnReplicated,
        Self::Replicated,
        Self::MemoryBalanced,
    ];

    /// Parses a strategy name as written on the command line.
    pub fn parse(name: &str) -> Result<Self, PlanError> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| PlanError::UnknownStrategy(name.to_string()))
    }

    /// The strategy's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Megatron => "megatron",
            Self::MegatronSp => "megatron-sp",
            Self::AttnTpMlpReplicated => "attn-tp-mlp-replicated",
            Self::MlpTpAttnReplicated => "mlp-tp-attn-replicated",
            Self::Replicated => "replicated",
            Self::MemoryBalanced => "memory-balanced",
        }
    }

    /// Builds this strategy's plan for `shape` on `world` ranks.
    ///
    /// Query heads are split as evenly as possible into contiguous ranges; each rank holds
    /// the key/value heads its query heads read, so a group split between two ranks has its
    /// key/value head replicated on both (SmolLM2's 9 heads in 3 groups on 2 ranks: 5 + 4
    /// query heads, key/value head 1 on both ranks). When ranks divide the key/value heads
    /// this is the usual group-aligned split with no replication.
    ///
    /// MLP splits cut on the model's fixed reduction chunks
    /// ([`ModelShape::mlp_reduce_chunk`]) so that deterministic reduction can run them.
    pub fn plan(self, shape: &ModelShape, world: usize) -> Result<ShardPlan, PlanError> {
        self.plan_for_memory(shape, &vec![1.0; world])
    }

    /// Builds the plan for ranks with the given relative memories (one per rank; only
    /// `memory-balanced` uses them, to size each rank's share of heads, MLP columns and
    /// vocabulary; the others split evenly).
    pub fn plan_for_memory(
        self,
        shape: &ModelShape,
        rank_memory: &[f64],
    ) -> Result<ShardPlan, PlanError> {
        let world = rank_memory.len();
        if world == 0 {
            return Err(PlanError::ZeroRanks);
        }
        if let Some(bad) = rank_memory.iter().find(|m| !(m.is_finite() && **m > 0.0)) {
            return Err(PlanError::BadMemory(*bad));
        }
        let megatron_like = matches!(
            self,
            Self::Megatron | Self::MegatronSp | Self::MemoryBalanced
        );
        let split_attn = (megatron_like || self == Self::AttnTpMlpReplicated) && world > 1;
        let split_mlp = (megatron_like || self == Self::MlpTpAttnReplicated) && world > 1;
        let split_vocab = megatron_like && world > 1;
        let chunk = shape.mlp_reduce_chunk();
        let split = |total: usize, unit: usize| -> Vec<Span> {
            if self == Self::MemoryBalanced {
                weighted_spans(total, rank_memory, unit)
            } else {
                even_unit_spans(total, unit, world)
            }
        };
        let attention = if split_attn {
            AttentionSharding::Heads {
                ranks: split(shape.heads, 1)
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
                spans: split(shape.intermediate, chunk),
            }
        } else {
            DimSharding::Replicated
        };
        let vocab = if split_vocab {
            DimSharding::Split {
                spans: split(shape.vocab, 1),
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
            sequence_parallel: self == Self::MegatronSp && world > 1,
        };
        plan.validate()?;
        Ok(plan)
    }
}
