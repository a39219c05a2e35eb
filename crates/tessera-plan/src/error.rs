//! Errors of plan construction, parsing and validation.

use crate::span::Span;

/// Why a plan could not be built, parsed or accepted.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The rank count was zero.
    #[error("the rank count must be at least 1 (got --tp 0)")]
    ZeroRanks,
    /// The JSON text did not parse as a plan.
    #[error("plan JSON is invalid: {0}")]
    Json(String),
    /// The plan was written in a layout version this build does not read.
    #[error("plan format {0} is not supported (this build reads format 1)")]
    Format(u32),
    /// The plan was made for a model of another shape.
    #[error("the plan was made for another model shape\n  plan:  {plan}\n  model: {model}")]
    ModelMismatch {
        /// The plan's model shape.
        plan: String,
        /// The loaded model's shape.
        model: String,
    },
    /// The model's shape cannot be sharded.
    #[error("model shape cannot be sharded: {0}")]
    BadShape(String),
    /// The plan's layer count differs from the model's.
    #[error("the plan has {plan} layers but the model has {model}")]
    LayerCount {
        /// Layers in the plan.
        plan: usize,
        /// Layers in the model.
        model: usize,
    },
    /// A split lists another number of ranks than the plan's world size.
    #[error("{what}: {got} per-rank ranges given for {expected} ranks")]
    RankCount {
        /// The weight or dimension.
        what: String,
        /// The plan's world size.
        expected: usize,
        /// Ranges found.
        got: usize,
    },
    /// A range ends before it starts.
    #[error("{what}: rank {rank} has the reversed range {span}")]
    Reversed {
        /// The weight or dimension.
        what: String,
        /// The rank.
        rank: usize,
        /// The offending range.
        span: Span,
    },
    /// Two consecutive ranks' ranges overlap.
    #[error("{what}: rank {rank} starts at {start} but the ranks before it end at {previous_end}: ranges overlap")]
    Overlap {
        /// The weight or dimension.
        what: String,
        /// The rank.
        rank: usize,
        /// Start of its range.
        start: usize,
        /// End of the previous range.
        previous_end: usize,
    },
    /// Consecutive ranks' ranges leave indices unassigned.
    #[error("{what}: rank {rank} starts at {start} but the ranks before it end at {previous_end}: indices {previous_end}..{start} belong to no rank")]
    Gap {
        /// The weight or dimension.
        what: String,
        /// The rank.
        rank: usize,
        /// Start of its range.
        start: usize,
        /// End of the previous range.
        previous_end: usize,
    },
    /// A sequence-parallel plan leaves half of a layer unsplit.
    #[error("model.layers.{layer}: sequence parallelism needs both the attention and the MLP split across the ranks")]
    SequenceParallel {
        /// The layer.
        layer: usize,
    },
    /// A rank memory given to `memory-balanced` is not a positive number.
    #[error("rank memory {0} is not a positive size")]
    BadMemory(f64),
    /// A split MLP cuts inside one of the fixed reduction chunks.
    #[error("model.layers.{layer}.mlp: rank {rank} starts at intermediate column {start}, inside a {chunk}-column reduction chunk; deterministic reduction needs cuts on multiples of {chunk} (or run with --fast-reduce)")]
    ReduceChunk {
        /// The layer.
        layer: usize,
        /// The rank.
        rank: usize,
        /// Start of its span.
        start: usize,
        /// The chunk width.
        chunk: usize,
    },
    /// The ranges stop short of (or run past) the dimension.
    #[error("{what}: the ranges cover 0..{end} but the dimension has {len} entries")]
    Coverage {
        /// The weight or dimension.
        what: String,
        /// End of the last range.
        end: usize,
        /// Size of the dimension.
        len: usize,
    },
    /// A rank's key/value heads are not those its query heads read.
    #[error("model.layers.{layer}.self_attn: rank {rank} holds query heads {q_heads} which read key/value heads {needed}, but the plan gives it {kv_heads}")]
    KvHeads {
        /// Layer index.
        layer: usize,
        /// The rank.
        rank: usize,
        /// Its query heads.
        q_heads: Span,
        /// Its key/value heads as planned.
        kv_heads: Span,
        /// The key/value heads it needs.
        needed: Span,
    },
    /// The strategy name is not known.
    #[error("unknown strategy '{0}' (known: {known})", known = crate::strategy::Strategy::NAMES.join(", "))]
    UnknownStrategy(String),
}
