//! The plan of a step while it is being made: budgets left and chunks chosen so far.

/// A chunk decided while planning; applied to the sequence once planning is over.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) id: u64,
    pub(super) start: usize,
    pub(super) len: usize,
    /// Counted against the prefill budget (not a one-token decode).
    pub(super) prefill: bool,
}

#[derive(Debug)]
pub(super) struct StepDraft {
    /// Tokens left in this step.
    pub(super) budget: usize,
    /// Prefill tokens (chunks that are not one-token decodes) left in this step.
    pub(super) prefill_budget: usize,
    pub(super) chunks: Vec<Chunk>,
    pub(super) preempted: Vec<u64>,
}

impl StepDraft {
    /// Tokens a chunk of a sequence with `remaining` tokens may take now.
    pub(super) fn room(&self, remaining: usize, prefill: bool) -> usize {
        let room = remaining.min(self.budget);
        if prefill {
            room.min(self.prefill_budget)
        } else {
            room
        }
    }

    pub(super) fn take(&mut self, chunk: Chunk) {
        self.budget -= chunk.len;
        if chunk.prefill {
            self.prefill_budget -= chunk.len;
        }
        self.chunks.push(chunk);
    }

    pub(super) fn give_back(&mut self, at: usize) {
        let chunk = self.chunks.remove(at);
        self.budget += chunk.len;
        if chunk.prefill {
            self.prefill_budget += chunk.len;
        }
    }
}
