//! Continuous batching: which sequences run in the next forward pass, over which tokens
//! and blocks. The scheduler owns the [`BlockPool`] and every live sequence.
//!
//! An engine loop drives it:
//!
//! ```text
//! loop {
//!     plan = scheduler.schedule();                  // StepPlan: plain data
//!     rows = forward(plan.seqs)                     // writes K/V into each block table
//!     for seq in plan.seqs where seq.logits == Last {
//!         token = sample(rows[seq])
//!         scheduler.append_token(seq.id, token)     // ReachedMaxTokens frees it
//!         if token is a stop token { scheduler.finish(seq.id) }
//!     }
//! }
//! ```
//!
//! A sequence is waiting (no blocks) or running (holds a block table whose first
//! `num_computed` slots hold its K/V). Preemption frees all of a running sequence's
//! blocks and puts it back at the front of the waiting queue, tokens kept; readmitted,
//! it recomputes them (cheaply when its full blocks are still in the prefix cache).

use std::collections::{HashMap, VecDeque};

use tessera_model::{LogitRows, StepSeq};

use crate::block_pool::{BlockId, BlockPool, BlockTable, PoolError, PrefixStats};

mod draft;
mod step_plan;

use draft::{Chunk, StepDraft};
pub use step_plan::{AppendOutcome, StepPlan, StepShape};

/// Scheduler limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// KV-cache blocks per rank.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Most tokens fed to one forward pass.
    pub max_batch_tokens: usize,
    /// Most sequences in one forward pass.
    pub max_seqs: usize,
    /// Most tokens (prompt + generated) one sequence may reach: the model's context.
    pub max_context: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_blocks: 1024,
            block_size: 16,
            max_batch_tokens: 512,
            max_seqs: 64,
            max_context: 4096,
        }
    }
}

/// A generation request as the scheduler sees it: token ids in, a token budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedRequest {
    /// Caller-chosen id, unique among live sequences.
    pub id: u64,
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most; 0 computes only the prompt (the caller finishes the
    /// sequence after its chunk with logits).
    pub max_tokens: usize,
    /// Every prompt position's logits are wanted (prompt logprobs): the prefix cache must
    /// not skip any, so the whole prompt is computed.
    pub prompt_logits: bool,
}

/// Why the scheduler refused a request or a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// A configuration value is out of range.
    #[error("invalid scheduler config: {0}")]
    BadConfig(&'static str),
    /// The block pool refused an operation.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Nothing to compute logits from.
    #[error("request {0} has an empty prompt; send at least one token")]
    EmptyPrompt(u64),
    /// Ids must be unique among live sequences.
    #[error("a sequence with id {0} is already scheduled")]
    DuplicateId(u64),
    /// Prompt plus max_tokens exceeds the model's context.
    #[error(
        "request needs {needed} tokens (prompt + max_tokens) but the context limit is \
         {limit}; shorten the prompt or lower max_tokens"
    )]
    TooLong {
        /// Prompt length plus max_tokens.
        needed: usize,
        /// The context limit.
        limit: usize,
    },
    /// Prompt plus max_tokens exceeds the whole KV cache, so it could never run.
    #[error(
        "request needs {needed} tokens of KV cache (prompt + max_tokens) but the whole \
         cache holds {limit}; shorten the prompt, lower max_tokens or give the cache more memory"
    )]
    ExceedsCache {
        /// Prompt length plus max_tokens.
        needed: usize,
        /// Tokens the whole pool holds.
        limit: usize,
    },
    /// No live sequence has this id.
    #[error("no live sequence with id {0}")]
    UnknownSequence(u64),
    /// A token was appended to a sequence whose last step did not ask for logits.
    #[error("sequence {0} is not waiting for a sampled token")]
    NotAwaitingToken(u64),
}

#[derive(Debug)]
struct Sequence {
    /// Prompt followed by the tokens generated so far.
    tokens: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    /// Leading tokens whose K/V is in `table` (or is being written by the last plan).
    num_computed: usize,
    table: BlockTable,
    /// Chained hashes of the full blocks seen so far, in order.
    block_hashes: Vec<u64>,
    /// Admission skips the prefix cache (every prompt row must be computed).
    prompt_logits: bool,
}

impl Sequence {
    fn remaining(&self) -> usize {
        self.tokens.len() - self.num_computed
    }
}

/// Continuous-batching scheduler over a paged KV cache.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: BlockPool,
    seqs: HashMap<u64, Sequence>,
    /// Running ids in admission order: the last is the newest, preempted first.
    running: Vec<u64>,
    waiting: VecDeque<u64>,
}

impl Scheduler {
    /// A scheduler with an empty pool of `config.num_blocks` blocks.
    pub fn new(config: SchedulerConfig) -> Result<Self, SchedError> {
        if config.max_batch_tokens == 0 {
            return Err(SchedError::BadConfig("max_batch_tokens must be at least 1"));
        }
        if config.max_seqs == 0 {
            return Err(SchedError::BadConfig("max_seqs must be at least 1"));
        }
        let pool = BlockPool::new(config.num_blocks, config.block_size)?;
        Ok(Self {
            config,
            pool,
            seqs: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
        })
    }

    /// Queues a request, refusing at once one that could never run.
    pub fn add(&mut self, request: SchedRequest) -> Result<(), SchedError> {
        let SchedRequest {
            id,
            prompt,
            max_tokens,
            prompt_logits,
        } = request;
        if prompt.is_empty() {
            return Err(SchedError::EmptyPrompt(id));
        }
        if self.seqs.contains_key(&id) {
            return Err(SchedError::DuplicateId(id));
        }
        let needed = prompt.len().saturating_add(max_tokens);
        if needed > self.config.max_context {
            let limit = self.config.max_context;
            return Err(SchedError::TooLong { needed, limit });
        }
        // Alone in the pool it always fits, so it can always make progress.
        let limit = self.pool.capacity() * self.pool.block_size();
        if needed > limit {
            return Err(SchedError::ExceedsCache { needed, limit });
        }
        let sequence = Sequence {
            prompt_len: prompt.len(),
            tokens: prompt,
            max_tokens,
            num_computed: 0,
            table: self.pool.new_table(),
            block_hashes: Vec::new(),
            prompt_logits,
        };
        self.seqs.insert(id, sequence);
        self.waiting.push_back(id);
        Ok(())
    }

    /// Plans the next forward pass.
    ///
    /// The rule: there are no prefill or decode phases; every running sequence's computed
    /// tokens catch up with its known tokens (prompt + generated), under a budget of
    /// `max_batch_tokens` tokens and `max_seqs` sequences per step. Running sequences with
    /// one token left (decodes) go first, oldest first; then running sequences with more
    /// left get prefill chunks, oldest first, each as large as budget and free blocks allow;
    /// then, if nobody was preempted this step, waiting sequences are admitted in order
    /// (FCFS, stopping at the first that does not fit) with the same chunking, after
    /// sharing the full prompt blocks found in the prefix cache (always leaving at least
    /// one token to compute, for the logits; none for a request that wants the logits of
    /// every prompt position). When a running sequence has no block for even
    /// one token, the newest running sequence is preempted (possibly itself): its blocks are
    /// freed and it waits at the front of the queue, keeping its tokens. The oldest running
    /// sequence is thus never starved of blocks, and since every admitted request fits the
    /// pool alone, some sequence always progresses. Computed counts advance as the plan is
    /// made, and blocks the plan fills are registered in the prefix cache at the end of this
    /// call, after all admissions, so only later steps (which run after this one wrote them)
    /// can share them. Apply every plan before the next `schedule`; if a forward pass
    /// fails, the cache holds garbage and the scheduler must be dropped.
    pub fn schedule(&mut self) -> StepPlan {
        self.schedule_paced(|_| usize::MAX)
    }

    /// Plans the next forward pass like [`Scheduler::schedule`], with a separate budget
    /// for prefill tokens (chunks of more than the one token a decode feeds, and every
    /// admission) while decodes run.
    ///
    /// The pacing rule: when this step decodes at least one running sequence, its prefill
    /// chunks together take at most `prefill_cap(shape)` tokens (and the step at most
    /// `max_batch_tokens`), so a decode never waits behind a whole prefill chunk; the
    /// caller derives the cap from a target inter-token time and a cost model (the
    /// engine's [`crate::engine`] pacing). With no decode running, prefill takes the whole
    /// `max_batch_tokens`, since no one is waiting for a token. Only chunk sizes change,
    /// never what a sequence computes, so outputs do not depend on the cap.
    pub fn schedule_paced(&mut self, prefill_cap: impl FnOnce(StepShape) -> usize) -> StepPlan {
        let max = self.config.max_batch_tokens;
        let decodes = self
            .running
            .iter()
            .filter(|id| self.seqs.get(id).is_some_and(|seq| seq.remaining() == 1))
            .count()
            .min(self.config.max_seqs);
        let prefill_budget = if decodes == 0 {
            max
        } else {
            let batch = (self.running.len() + self.waiting.len()).min(self.config.max_seqs);
            prefill_cap(StepShape { decodes, batch }).min(max)
        };
        let mut draft = StepDraft {
            budget: max,
            prefill_budget,
            chunks: Vec::new(),
            preempted: Vec::new(),
        };
        self.plan_running(&mut draft);
        if draft.preempted.is_empty() {
            self.admit_waiting(&mut draft);
        }
        self.apply(draft)
    }

    /// Records a token sampled from the last step's logits for `id`; when it is the
    /// request's last allowed token, the sequence is finished and its blocks are freed.
    pub fn append_token(&mut self, id: u64, token: u32) -> Result<AppendOutcome, SchedError> {
        let seq = self
            .seqs
            .get_mut(&id)
            .ok_or(SchedError::UnknownSequence(id))?;
        if seq.remaining() != 0 || !self.running.contains(&id) {
            return Err(SchedError::NotAwaitingToken(id));
        }
        seq.tokens.push(token);
        if seq.tokens.len() - seq.prompt_len >= seq.max_tokens {
            self.remove(id)?;
            return Ok(AppendOutcome::ReachedMaxTokens);
        }
        Ok(AppendOutcome::Continue)
    }

    /// Ends a sequence (stop token, stop string) and frees its blocks now.
    pub fn finish(&mut self, id: u64) -> Result<(), SchedError> {
        self.remove(id)
    }

    /// Drops a waiting or running sequence and frees its blocks now.
    pub fn cancel(&mut self, id: u64) -> Result<(), SchedError> {
        tracing::debug!(id, "sequence cancelled");
        self.remove(id)
    }

    /// Tokens generated so far by a live sequence.
    pub fn generated(&self, id: u64) -> Option<&[u32]> {
        self.seqs.get(&id).map(|seq| &seq.tokens[seq.prompt_len..])
    }

    /// Sequences holding blocks.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Sequences queued without blocks (new or preempted).
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Blocks held by sequences (cached blocks nobody holds count as free).
    pub fn blocks_used(&self) -> usize {
        self.pool.num_used()
    }

    /// Blocks in the pool.
    pub fn blocks_total(&self) -> usize {
        self.pool.capacity()
    }

    /// Prefix-cache queries and hits, in blocks.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.pool.prefix_stats()
    }

    /// The block pool, for metrics.
    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    /// The limits this scheduler runs under.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn remove(&mut self, id: u64) -> Result<(), SchedError> {
        let mut seq = self
            .seqs
            .remove(&id)
            .ok_or(SchedError::UnknownSequence(id))?;
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        free_blocks(&mut self.pool, &mut seq);
        Ok(())
    }

    fn plan_running(&mut self, draft: &mut StepDraft) {
        let (decodes, prefills): (Vec<u64>, Vec<u64>) = self
            .running
            .iter()
            .copied()
            .filter(|id| self.seqs.get(id).is_some_and(|seq| seq.remaining() > 0))
            .partition(|id| self.seqs.get(id).is_some_and(|seq| seq.remaining() == 1));
        for id in decodes.into_iter().chain(prefills) {
            if draft.budget == 0 || draft.chunks.len() >= self.config.max_seqs {
                break;
            }
            // Skip sequences preempted earlier in this step.
            if self.running.contains(&id) {
                self.plan_one_running(id, draft);
            }
        }
    }

    /// Gives `id` the largest chunk that budget and free blocks allow, preempting the
    /// newest running sequence while not even one token fits.
    fn plan_one_running(&mut self, id: u64, draft: &mut StepDraft) {
        loop {
            let Some(seq) = self.seqs.get_mut(&id) else {
                return;
            };
            let prefill = seq.remaining() > 1;
            let want = draft.room(seq.remaining(), prefill);
            if want == 0 {
                return; // out of prefill budget: it waits for a later step, keeping its blocks
            }
            let len = want.min(seq.table.max_new_tokens(self.pool.num_free()));
            if len > 0 {
                let start = seq.num_computed;
                if seq.table.append(&mut self.pool, len) {
                    draft.take(Chunk {
                        id,
                        start,
                        len,
                        prefill,
                    });
                }
                return;
            }
            let Some(&victim) = self.running.last() else {
                return;
            };
            self.preempt(victim, draft);
            if victim == id {
                return;
            }
        }
    }

    fn preempt(&mut self, id: u64, draft: &mut StepDraft) {
        self.running.retain(|&r| r != id);
        if let Some(at) = draft.chunks.iter().position(|chunk| chunk.id == id) {
            draft.give_back(at);
        }
        if let Some(seq) = self.seqs.get_mut(&id) {
            free_blocks(&mut self.pool, seq);
        }
        self.waiting.push_front(id);
        draft.preempted.push(id);
        tracing::debug!(id, "sequence preempted: out of KV blocks");
    }

    fn admit_waiting(&mut self, draft: &mut StepDraft) {
        while draft.room(1, true) > 0 && draft.chunks.len() < self.config.max_seqs {
            let Some(&id) = self.waiting.front() else {
                return;
            };
            if !self.admit(id, draft) {
                return;
            }
        }
    }

    /// Admits the front waiting sequence with its cached prefix and a first chunk;
    /// `false` (changing nothing) when not even one token fits.
    fn admit(&mut self, id: u64, draft: &mut StepDraft) -> bool {
        let block_size = self.pool.block_size();
        let Some(seq) = self.seqs.get_mut(&id) else {
            self.waiting.pop_front(); // unreachable: waiting ids are live
            return true;
        };
        // Only blocks before the last token: that token must be computed for logits.
        let hashes = if seq.prompt_logits {
            Vec::new()
        } else {
            full_block_hashes(&seq.tokens[..seq.tokens.len() - 1], block_size)
        };
        let hits: Vec<BlockId> = hashes.iter().map_while(|&h| self.pool.peek(h)).collect();
        let revived = hits
            .iter()
            .filter(|&&block| self.pool.ref_count(block) == Some(0))
            .count();
        let cached = hits.len() * block_size;
        let want = draft.room(seq.tokens.len() - cached, true);
        let len = want.min((self.pool.num_free() - revived) * block_size);
        if len == 0 {
            return false;
        }
        // Take the hits, plus one query for the first miss so the stats count it.
        for &hash in hashes.iter().take(hits.len() + 1) {
            if let Some(block) = self.pool.lookup(hash) {
                if let Err(err) = seq.table.push_full(block) {
                    tracing::error!(%err, id, "prefix hit after a partial block");
                }
            }
        }
        debug_assert_eq!(seq.table.blocks(), hits.as_slice());
        seq.block_hashes = hashes[..hits.len()].to_vec();
        seq.num_computed = cached;
        if !seq.table.append(&mut self.pool, len) {
            // Unreachable: `len` was sized to the free blocks. Undo the admission.
            free_blocks(&mut self.pool, seq);
            return false;
        }
        self.waiting.pop_front();
        self.running.push(id);
        draft.take(Chunk {
            id,
            start: cached,
            len,
            prefill: true,
        });
        tracing::trace!(id, cached, len, "sequence admitted");
        true
    }

    /// Advances computed counts, registers newly full blocks, and builds the plan.
    fn apply(&mut self, draft: StepDraft) -> StepPlan {
        let block_size = self.pool.block_size();
        let mut seqs = Vec::with_capacity(draft.chunks.len());
        for Chunk { id, start, len, .. } in draft.chunks {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.num_computed = start + len;
            register_full_blocks(&mut self.pool, seq, block_size);
            let logits = if seq.num_computed == seq.tokens.len() {
                LogitRows::Last
            } else {
                LogitRows::None
            };
            seqs.push(StepSeq {
                id,
                tokens: seq.tokens[start..start + len].to_vec(),
                start,
                block_table: seq.table.blocks().iter().map(|b| b.0).collect(),
                logits,
            });
        }
        StepPlan {
            seqs,
            preempted: draft.preempted,
        }
    }
}

/// Returns every block of `seq` to the pool and forgets its computed state: the one
/// release path for finish, cancel and preemption.
fn free_blocks(pool: &mut BlockPool, seq: &mut Sequence) {
    if let Err(err) = pool.free_table(&mut seq.table) {
        // Only a bookkeeping bug gets here: a table held a block it did not own.
        tracing::error!(%err, "freeing a sequence's blocks");
    }
    seq.num_computed = 0;
    seq.block_hashes.clear();
}

/// Registers the blocks that `seq.num_computed` has filled since the last call.
fn register_full_blocks(pool: &mut BlockPool, seq: &mut Sequence, block_size: usize) {
    let full = seq.num_computed / block_size;
    while seq.block_hashes.len() < full {
        let index = seq.block_hashes.len();
        let tokens = &seq.tokens[index * block_size..(index + 1) * block_size];
        let hash = BlockPool::hash_block(seq.block_hashes.last().copied(), tokens);
        if let Some(&block) = seq.table.blocks().get(index) {
            // `false` means another block already caches this content: nothing to do.
            if let Err(err) = pool.register(block, hash) {
                tracing::error!(%err, "registering a full block");
            }
        }
        seq.block_hashes.push(hash);
    }
}

/// Chained hashes of the full blocks of `tokens`.
fn full_block_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut parent = None;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            let hash = BlockPool::hash_block(parent, block);
            parent = Some(hash);
            hash
        })
        .collect()
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
