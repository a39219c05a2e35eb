//! What the scheduler hands out: the plan of one forward pass ([`StepPlan`]), the shape a
//! prefill budget is chosen from ([`StepShape`]), and the outcome of appending a token.

use tessera_model::StepSeq;

/// What to run in one forward pass: the whole contract between the scheduler and the
/// ranks. Each [`StepSeq`] is what a rank consumes, as the scheduler built it; a chunk
/// that ends at the sequence's last known token asks for [`LogitRows::Last`] (the engine
/// samples its next token from that row), any other chunk for [`LogitRows::None`].
///
/// [`LogitRows::Last`]: tessera_model::LogitRows::Last
/// [`LogitRows::None`]: tessera_model::LogitRows::None
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Sequences to run: decodes first, then prefill chunks, then new admissions.
    pub seqs: Vec<StepSeq>,
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
