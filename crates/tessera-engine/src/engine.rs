//! The serving engine: many requests share the ranks, step by step.
//!
//! One engine thread owns the [`Coordinator`](crate::Coordinator), the
//! [`Scheduler`](crate::scheduler::Scheduler) and every request's sampler. Each step it
//! takes new submissions and cancellations, asks the scheduler for a
//! [`crate::scheduler::StepPlan`], runs it on the ranks, samples a token for every
//! sequence whose chunk reached its last known token, and streams [`Event`]s to the
//! callers through tokio channels (so async callers never block on a step). A request
//! whose receiver is dropped is cancelled: its blocks are freed within one step.
//!
//! A request is admitted inside the tracing span of the caller that submitted it (the
//! server's request span): the admission line maps that request to the engine's sequence
//! id, which later engine-thread lines (preemption, cancellation) carry.
//!
//! Parts: [`handle`] (the caller's API), [`request`] (what goes in and comes out, and
//! the state of a live request), [`step`] (the engine thread's loop), [`pace`] (prefill
//! budgets that keep the inter-token time), [`detok`] (token ids to text deltas).

mod detok;
mod handle;
pub mod pace;
mod request;
mod step;

pub use handle::{EngineConfig, EngineHandle, EngineStats, Submission};
pub use pace::ItlTarget;
pub use request::{Event, FinishReason, Request, TokenLogprobs, Usage, FLUSH_TOKEN};
