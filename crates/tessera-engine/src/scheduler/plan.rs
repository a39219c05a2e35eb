//! What the scheduler hands out: the plan of one forward pass ([`StepPlan`]), the shape a
//! prefill budget is chosen from ([`StepShape`]), and the outcome of appending a token.

use crate::block_pool::BlockId;

/// One sequence's share of a forward pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The sequence's id.
    pub id: u64,
    /// Position of `tokens[0]`.
    pub start_pos: usize,
    /// Token ids to feed, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: Vec<u32>,
    /// The whole block table, covering at least `start_pos + tokens.len()` positions.
    pub block_table: Vec<BlockId>,
    /// The chunk ends at the last known token: sample one token from its last row.
    pub needs_logits: bool,
}

/// What to run in one forward pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Sequences to run: decodes first, then prefill chunks, then new admissions.
    pub seqs: Vec<ScheduledSeq>,
    /// Sequences preempted by this step: their blocks are freed and they wait again.
    pub preempted: Vec<u64>,
}

impl StepPlan {
    /// Tokens fed in this step.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|seq| seq.tokens.len()).sum()
    }

    /// Nothing to run.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// What [`Scheduler::append_token`] did with a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The sequence goes on.
    Continue,
    /// The sequence has its max_tokens: it is finished and its blocks are freed.
    ReachedMaxTokens,
}

/// What a step's prefill budget may depend on: see [`Scheduler::schedule_paced`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepShape {
    /// Running sequences that decode (one token) in this step.
    pub decodes: usize,
    /// Sequences the queue would run together (running plus waiting, at most `max_seqs`):
    /// the batch whose decode step the running sequences will see once all are admitted.
    pub batch: usize,
}
