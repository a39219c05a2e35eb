//! The engine: a coordinator that owns one thread per rank, and generation on top of it.
//!
//! Data flows one way: a caller asks the [`Coordinator`] for a forward pass; every rank
//! thread runs its shard (collectives meet in the communicator) and rank 0 hands the
//! full-vocabulary logits back.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod block_pool;
pub mod constraint;
mod coordinator;
mod engine;
mod generate;
mod histogram;
pub mod node;
mod prompt_scores;
pub mod sampling;
pub mod scheduler;

pub use coordinator::{Coordinator, EngineError, EngineOptions};
pub use engine::pace;
pub use engine::{
    EngineConfig, EngineHandle, EngineStats, Event, FinishReason, ItlTarget, Request, Submission,
    TokenLogprobs, Usage, FLUSH_TOKEN,
};
pub use generate::{GenerateOutput, GenerateRequest};
pub use histogram::{Histogram, COLLECTIVE_STEP_BUCKETS};
// What a rank thread runs lives beside the model; the engine decides the threads per rank.
pub use tessera_model::worker::{CpuLoader, RankLoader, RankSetup, RankStarter, RankWorker};
pub use tessera_model::{LogitRows, StepSeq};
