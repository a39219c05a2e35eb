//! Shard plans: for every weight of a Llama-family model, the slice each rank holds, the
//! collectives that follow, and what that costs per rank.
//!
//! Everything here is pure data and arithmetic: no weights, no threads. The model loader
//! applies a plan; the forward pass runs the collectives it names.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod collective;
pub mod cost;
mod error;
mod hardware;
mod plan;
mod reduce;
mod report;
mod role;
mod shape;
mod span;
mod strategy;

pub use collective::{Collective, CollectiveOp, CollectiveSite, LayerHalf};
pub use error::PlanError;
pub use hardware::HardwareProfile;
pub use plan::{AttentionSharding, DimSharding, HeadShard, LayerPlan, ShardPlan, PLAN_FORMAT};
pub use reduce::{even_unit_spans, published_vectors, ReduceMode};
pub use report::render_table;
pub use role::{Role, WeightKind};
pub use shape::ModelShape;
pub use span::{even_spans, kv_span_for, weighted_spans, Span};
pub use strategy::Strategy;
