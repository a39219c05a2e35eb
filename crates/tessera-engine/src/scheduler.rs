//! Continuous batching: which sequences run in the next forward pass, over which tokens
//! and blocks. The scheduler owns the [`BlockPool`] and every live sequence.
//!
//! An engine loop drives it:
//!
//! ```text
//! loop {
//!     plan = scheduler.schedule();                  // StepPlan: plain data
//!     rows = forward(plan.seqs)                     // writes K/V into each block table
//!     for seq in plan.seqs where seq.needs_logits {
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

use crate::block_pool::{BlockId, BlockPool, BlockTable, PoolError, PrefixStats};

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

/// A chunk decided while planning; applied to the sequence once planning is over.
#[derive(Debug)]
struct Chunk {
    id: u64,
    start: usize,
    len: usize,
}

#[derive(Debug)]
struct StepDraft {
    budget: usize,
    chunks: Vec<Chunk>,
    preempted: Vec<u64>,
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
        let mut draft = StepDraft {
            budget: self.config.max_batch_tokens,
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
            let want = seq.remaining().min(draft.budget);
            let len = want.min(seq.table.max_new_tokens(self.pool.num_free()));
            if len > 0 {
                let start = seq.num_computed;
                if seq.table.append(&mut self.pool, len) {
                    draft.budget -= len;
                    draft.chunks.push(Chunk { id, start, len });
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
            draft.budget += draft.chunks.remove(at).len;
        }
        if let Some(seq) = self.seqs.get_mut(&id) {
            free_blocks(&mut self.pool, seq);
        }
        self.waiting.push_front(id);
        draft.preempted.push(id);
        tracing::debug!(id, "sequence preempted: out of KV blocks");
    }

    fn admit_waiting(&mut self, draft: &mut StepDraft) {
        while draft.budget > 0 && draft.chunks.len() < self.config.max_seqs {
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
        let want = (seq.tokens.len() - cached).min(draft.budget);
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
        draft.budget -= len;
        draft.chunks.push(Chunk {
            id,
            start: cached,
            len,
        });
        tracing::trace!(id, cached, len, "sequence admitted");
        true
    }

    /// Advances computed counts, registers newly full blocks, and builds the plan.
    fn apply(&mut self, draft: StepDraft) -> StepPlan {
        let block_size = self.pool.block_size();
        let mut seqs = Vec::with_capacity(draft.chunks.len());
        for Chunk { id, start, len } in draft.chunks {
            let Some(seq) = self.seqs.get_mut(&id) else {
                continue;
            };
            seq.num_computed = start + len;
            register_full_blocks(&mut self.pool, seq, block_size);
            seqs.push(ScheduledSeq {
                id,
                start_pos: start,
                tokens: seq.tokens[start..start + len].to_vec(),
                block_table: seq.table.blocks().to_vec(),
                needs_logits: seq.num_computed == seq.tokens.len(),
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn config(num_blocks: usize, block_size: usize, max_batch_tokens: usize) -> SchedulerConfig {
        SchedulerConfig {
            num_blocks,
            block_size,
            max_batch_tokens,
            max_seqs: 64,
            max_context: 100_000,
        }
    }

    fn request(id: u64, prompt: Vec<u32>, max_tokens: usize) -> SchedRequest {
        SchedRequest {
            id,
            prompt,
            max_tokens,
            prompt_logits: false,
        }
    }

    fn prompt(len: usize, seed: u32) -> Vec<u32> {
        (0..len as u32).map(|i| seed * 1000 + i).collect()
    }

    /// What a slot holds after position `p` was computed: a fingerprint of tokens[..=p],
    /// since a token's K/V depends on everything before it.
    fn fingerprints(tokens: &[u32]) -> Vec<u64> {
        let mut acc = 0xcbf2_9ce4_8422_2325u64;
        tokens
            .iter()
            .map(|&t| {
                acc = (acc ^ u64::from(t)).wrapping_mul(0x0000_0100_0000_01b3);
                acc
            })
            .collect()
    }

    /// A fake engine: keeps a simulated KV cache, checks every plan against it, samples
    /// deterministic tokens.
    struct Sim {
        sched: Scheduler,
        tokens: HashMap<u64, Vec<u32>>,
        prompt_len: HashMap<u64, usize>,
        max_tokens: HashMap<u64, usize>,
        kv: Vec<Option<u64>>,
        finished: HashMap<u64, Vec<u32>>,
        preemptions: usize,
        steps: usize,
    }

    impl Sim {
        fn new(config: SchedulerConfig) -> Self {
            let slots = config.num_blocks * config.block_size;
            Self {
                sched: Scheduler::new(config).unwrap(),
                tokens: HashMap::new(),
                prompt_len: HashMap::new(),
                max_tokens: HashMap::new(),
                kv: vec![None; slots],
                finished: HashMap::new(),
                preemptions: 0,
                steps: 0,
            }
        }

        fn add(&mut self, request: SchedRequest) -> Result<(), SchedError> {
            let (id, prompt, max_tokens) = (request.id, request.prompt.clone(), request.max_tokens);
            self.sched.add(request)?;
            self.prompt_len.insert(id, prompt.len());
            self.tokens.insert(id, prompt);
            self.max_tokens.insert(id, max_tokens);
            Ok(())
        }

        fn cancel(&mut self, id: u64) {
            self.sched.cancel(id).unwrap();
            self.tokens.remove(&id);
        }

        fn live(&self) -> usize {
            self.sched.num_running() + self.sched.num_waiting()
        }

        fn slot(&self, table: &[BlockId], pos: usize) -> usize {
            let bs = self.sched.config.block_size;
            table[pos / bs].index() * bs + pos % bs
        }

        fn step(&mut self) -> StepPlan {
            let plan = self.sched.schedule();
            self.steps += 1;
            self.preemptions += plan.preempted.len();
            self.check_plan(&plan);
            for seq in &plan.seqs {
                let fp = fingerprints(&self.tokens[&seq.id]);
                let end = seq.start_pos + seq.tokens.len();
                for (pos, &value) in fp.iter().enumerate().take(end).skip(seq.start_pos) {
                    let slot = self.slot(&seq.block_table, pos);
                    self.kv[slot] = Some(value);
                }
            }
            for seq in plan.seqs.iter().filter(|seq| seq.needs_logits) {
                let tokens = self.tokens.get_mut(&seq.id).unwrap();
                let generated = tokens.len() - self.prompt_len[&seq.id];
                // A tiny vocabulary, so generated text repeats across sequences too.
                let token = ((seq.id as usize * 3 + generated) % 4) as u32;
                tokens.push(token);
                match self.sched.append_token(seq.id, token).unwrap() {
                    AppendOutcome::Continue => {
                        assert_eq!(
                            self.sched.generated(seq.id).unwrap(),
                            &tokens[self.prompt_len[&seq.id]..]
                        );
                    }
                    AppendOutcome::ReachedMaxTokens => {
                        let tokens = self.tokens.remove(&seq.id).unwrap();
                        let generated = tokens[self.prompt_len[&seq.id]..].to_vec();
                        assert_eq!(generated.len(), self.max_tokens[&seq.id]);
                        self.finished.insert(seq.id, generated);
                    }
                }
            }
            self.check_books();
            plan
        }

        fn check_plan(&self, plan: &StepPlan) {
            let config = &self.sched.config;
            assert!(plan.num_tokens() <= config.max_batch_tokens, "token budget");
            assert!(plan.seqs.len() <= config.max_seqs, "sequence budget");
            if self.live() > 0 || !plan.preempted.is_empty() {
                assert!(!plan.is_empty(), "live sequences but nothing scheduled");
            }
            let ids: HashSet<u64> = plan.seqs.iter().map(|seq| seq.id).collect();
            assert_eq!(ids.len(), plan.seqs.len(), "a sequence scheduled twice");
            assert!(plan.preempted.iter().all(|id| !ids.contains(id)));
            let mut writer: HashMap<BlockId, u64> = HashMap::new();
            for seq in &plan.seqs {
                let tokens = &self.tokens[&seq.id];
                let end = seq.start_pos + seq.tokens.len();
                assert!(!seq.tokens.is_empty());
                assert_eq!(seq.tokens, tokens[seq.start_pos..end]);
                assert_eq!(seq.needs_logits, end == tokens.len());
                assert!(seq.block_table.len() * config.block_size >= end);
                let fp = fingerprints(tokens);
                for (pos, &value) in fp.iter().enumerate().take(seq.start_pos) {
                    let slot = self.slot(&seq.block_table, pos);
                    assert_eq!(
                        self.kv[slot],
                        Some(value),
                        "seq {} reads a wrong K/V at {pos}",
                        seq.id
                    );
                }
                for pos in seq.start_pos..end {
                    let block = seq.block_table[pos / config.block_size];
                    assert_eq!(
                        self.sched.pool.ref_count(block),
                        Some(1),
                        "writing a shared block"
                    );
                    assert_eq!(
                        *writer.entry(block).or_insert(seq.id),
                        seq.id,
                        "two writers"
                    );
                }
            }
        }

        /// Every block's ref count is the number of running tables holding it.
        fn check_books(&self) {
            let pool = &self.sched.pool;
            pool.check_invariants();
            let mut holders: HashMap<BlockId, u32> = HashMap::new();
            for id in &self.sched.running {
                let seq = &self.sched.seqs[id];
                assert_eq!(seq.table.num_tokens(), seq.num_computed);
                for &block in seq.table.blocks() {
                    *holders.entry(block).or_default() += 1;
                }
            }
            for id in &self.sched.waiting {
                assert!(
                    self.sched.seqs[id].table.blocks().is_empty(),
                    "waiting with blocks"
                );
            }
            for index in 0..pool.capacity() {
                let block = BlockId(index as u32);
                let held = holders.get(&block).copied().unwrap_or(0);
                assert_eq!(pool.ref_count(block), Some(held), "block {index}");
            }
            assert_eq!(self.live(), self.sched.seqs.len());
        }

        fn run_until_idle(&mut self, max_steps: usize) {
            while self.live() > 0 {
                assert!(
                    self.steps < max_steps,
                    "no progress after {max_steps} steps"
                );
                self.step();
            }
        }
    }

    #[test]
    fn new_rejects_zero_limits() {
        let zero_budget = SchedulerConfig {
            max_batch_tokens: 0,
            ..SchedulerConfig::default()
        };
        assert!(matches!(
            Scheduler::new(zero_budget),
            Err(SchedError::BadConfig(_))
        ));
        let zero_block = SchedulerConfig {
            block_size: 0,
            ..SchedulerConfig::default()
        };
        assert_eq!(
            Scheduler::new(zero_block).err(),
            Some(SchedError::Pool(PoolError::ZeroBlockSize))
        );
    }

    #[test]
    fn add_refuses_requests_that_could_never_run() {
        let mut sched = Scheduler::new(SchedulerConfig {
            max_context: 100,
            ..config(4, 16, 512)
        })
        .unwrap();
        assert_eq!(
            sched.add(request(1, prompt(90, 0), 20)),
            Err(SchedError::TooLong {
                needed: 110,
                limit: 100
            })
        );
        assert_eq!(
            sched.add(request(2, prompt(60, 0), 5)),
            Err(SchedError::ExceedsCache {
                needed: 65,
                limit: 64
            })
        );
        assert_eq!(
            sched.add(request(3, vec![], 5)),
            Err(SchedError::EmptyPrompt(3))
        );
        sched.add(request(5, prompt(60, 0), 4)).unwrap();
        assert_eq!(
            sched.add(request(5, prompt(1, 0), 1)),
            Err(SchedError::DuplicateId(5))
        );
        assert_eq!(sched.num_waiting(), 1);
        let message = SchedError::TooLong {
            needed: 110,
            limit: 100,
        }
        .to_string();
        assert!(
            message.contains("110") && message.contains("100"),
            "{message}"
        );
    }

    #[test]
    fn request_filling_the_whole_pool_completes() {
        let mut sim = Sim::new(config(4, 4, 8));
        sim.add(request(1, prompt(10, 1), 6)).unwrap();
        sim.run_until_idle(100);
        assert_eq!(sim.finished[&1].len(), 6);
        assert_eq!(sim.sched.blocks_used(), 0);
    }

    #[test]
    fn long_prompt_is_prefilled_in_chunks_under_the_budget() {
        let mut sim = Sim::new(config(8, 16, 16));
        sim.add(request(1, prompt(40, 1), 2)).unwrap();
        let chunks: Vec<(usize, usize, bool)> = (0..3)
            .map(|_| {
                let plan = sim.step();
                let seq = &plan.seqs[0];
                (seq.start_pos, seq.tokens.len(), seq.needs_logits)
            })
            .collect();
        assert_eq!(chunks, [(0, 16, false), (16, 16, false), (32, 8, true)]);
        let decode = sim.step();
        assert_eq!(
            (decode.seqs[0].start_pos, decode.seqs[0].tokens.len()),
            (40, 1)
        );
        assert!(sim.finished.contains_key(&1));
        assert_eq!(sim.sched.blocks_used(), 0);
    }

    #[test]
    fn decodes_go_first_then_prefill_chunks_then_admissions() {
        let mut sim = Sim::new(config(32, 4, 10));
        sim.add(request(1, prompt(3, 1), 5)).unwrap();
        sim.step(); // 1 prefilled: now decoding
        sim.add(request(2, prompt(30, 2), 5)).unwrap();
        sim.add(request(3, prompt(3, 3), 5)).unwrap();
        let plan = sim.step(); // 1 decodes, 2 gets the rest of the budget, 3 waits
        let shape: Vec<(u64, usize)> = plan.seqs.iter().map(|s| (s.id, s.tokens.len())).collect();
        assert_eq!(shape, [(1, 1), (2, 9)]);
        let plan = sim.step(); // 2 is still prefilling, after the decode of 1
        let shape: Vec<(u64, usize)> = plan.seqs.iter().map(|s| (s.id, s.tokens.len())).collect();
        assert_eq!(shape, [(1, 1), (2, 9)]);
        assert_eq!(sim.sched.num_waiting(), 1);
    }

    #[test]
    fn max_seqs_caps_the_batch() {
        let mut sim = Sim::new(SchedulerConfig {
            max_seqs: 2,
            ..config(32, 4, 100)
        });
        for id in 0..5 {
            sim.add(request(id, prompt(3, id as u32), 2)).unwrap();
        }
        assert_eq!(sim.step().seqs.len(), 2);
        assert_eq!(sim.sched.num_waiting(), 3);
        sim.run_until_idle(100);
        assert_eq!(sim.finished.len(), 5);
    }

    #[test]
    fn cancel_frees_blocks_at_once_for_running_and_waiting() {
        let mut sim = Sim::new(config(4, 4, 64));
        sim.add(request(1, prompt(7, 1), 4)).unwrap();
        sim.add(request(2, prompt(7, 2), 4)).unwrap();
        sim.add(request(3, prompt(7, 3), 4)).unwrap();
        sim.step();
        assert_eq!((sim.sched.num_running(), sim.sched.num_waiting()), (2, 1));
        assert_eq!(sim.sched.blocks_used(), 4);
        sim.cancel(1);
        assert_eq!(sim.sched.blocks_used(), 2);
        assert_eq!(sim.sched.num_running(), 1);
        sim.cancel(3);
        assert_eq!(sim.sched.num_waiting(), 0);
        assert_eq!(sim.sched.cancel(3), Err(SchedError::UnknownSequence(3)));
        sim.cancel(2);
        assert_eq!(sim.sched.blocks_used(), 0);
        assert_eq!(sim.sched.pool.num_free(), 4);
        sim.check_books();
    }

    #[test]
    fn append_token_only_follows_a_chunk_with_logits() {
        let mut sim = Sim::new(config(8, 4, 4));
        sim.add(request(1, prompt(6, 1), 3)).unwrap();
        assert_eq!(
            sim.sched.append_token(1, 0),
            Err(SchedError::NotAwaitingToken(1))
        );
        sim.sched.schedule(); // 4 of 6 prompt tokens
        assert_eq!(
            sim.sched.append_token(1, 0),
            Err(SchedError::NotAwaitingToken(1))
        );
        assert_eq!(
            sim.sched.append_token(9, 0),
            Err(SchedError::UnknownSequence(9))
        );
    }

    #[test]
    fn prefix_cache_shares_the_full_blocks_of_a_common_prompt() {
        let mut sim = Sim::new(config(16, 16, 512));
        let shared = prompt(40, 7);
        sim.add(request(1, shared.clone(), 4)).unwrap();
        let first = sim.step();
        assert_eq!(
            (first.seqs[0].start_pos, first.seqs[0].tokens.len()),
            (0, 40)
        );
        let before = sim.sched.prefix_stats();
        sim.add(request(2, shared, 4)).unwrap();
        let plan = sim.step();
        let second = plan.seqs.iter().find(|s| s.id == 2).unwrap();
        // Blocks 0 and 1 (tokens 0..32) are shared; tokens 32..40 are computed.
        assert_eq!((second.start_pos, second.tokens.len()), (32, 8));
        let first_table = &plan.seqs.iter().find(|s| s.id == 1).unwrap().block_table;
        assert_eq!(second.block_table[..2], first_table[..2]);
        assert_ne!(second.block_table[2], first_table[2]);
        let after = sim.sched.prefix_stats();
        assert_eq!(after.hits - before.hits, 2);
        assert_eq!(after.queries - before.queries, 2);
        sim.run_until_idle(100);
        assert_eq!(sim.finished[&1].len(), 4);
        assert_eq!(sim.finished[&2].len(), 4);
        assert_eq!(sim.sched.blocks_used(), 0);
    }

    #[test]
    fn prefix_cache_always_leaves_one_token_for_logits() {
        let mut sim = Sim::new(config(8, 4, 64));
        sim.add(request(1, prompt(8, 1), 1)).unwrap();
        sim.run_until_idle(10);
        sim.add(request(2, prompt(8, 1), 1)).unwrap();
        let plan = sim.step();
        // Only block 0 is looked up: block 1 holds the last prompt token.
        assert_eq!((plan.seqs[0].start_pos, plan.seqs[0].tokens.len()), (4, 4));
        assert!(plan.seqs[0].needs_logits);
    }

    #[test]
    fn prompt_logits_request_skips_the_prefix_cache_and_can_ask_for_no_tokens() {
        let mut sim = Sim::new(config(8, 4, 64));
        sim.add(request(1, prompt(8, 1), 1)).unwrap();
        sim.run_until_idle(10);
        sim.sched
            .add(SchedRequest {
                prompt_logits: true,
                ..request(2, prompt(8, 1), 0)
            })
            .unwrap();
        let plan = sim.sched.schedule();
        // Block 0 is cached, yet every prompt position is computed again.
        assert_eq!((plan.seqs[0].start_pos, plan.seqs[0].tokens.len()), (0, 8));
        assert!(plan.seqs[0].needs_logits);
        sim.sched.finish(2).unwrap();
        assert_eq!(sim.sched.blocks_used(), 0);
        assert!(sim.sched.schedule().is_empty());
    }

    #[test]
    fn preempted_sequence_resumes_with_its_generated_tokens() {
        // 4 blocks of 2 tokens: two sequences of 3 + 4 tokens cannot both finish.
        let mut sim = Sim::new(config(4, 2, 64));
        sim.add(request(1, prompt(3, 1), 4)).unwrap();
        sim.add(request(2, prompt(3, 2), 4)).unwrap();
        sim.step();
        sim.step();
        let plan = sim.step(); // 1 needs a third block: 2, the newest, is preempted
        assert_eq!(plan.preempted, [2]);
        assert_eq!(sim.sched.generated(2).unwrap().len(), 2);
        assert_eq!(sim.sched.num_waiting(), 1);
        let resumed = loop {
            let plan = sim.step();
            if let Some(seq) = plan.seqs.into_iter().find(|s| s.id == 2) {
                break seq;
            }
        };
        // Recomputed from its cached prefix up to and including its generated tokens.
        assert!(resumed.needs_logits);
        assert_eq!(resumed.start_pos + resumed.tokens.len(), 5);
        assert!(resumed.start_pos < 5);
        sim.run_until_idle(100);
        assert_eq!(sim.finished[&1].len(), 4);
        assert_eq!(sim.finished[&2].len(), 4);
        assert!(sim.preemptions >= 1);
    }

    #[test]
    fn tiny_pool_many_requests_all_finish_without_leaks() {
        let mut sim = Sim::new(SchedulerConfig {
            max_seqs: 8,
            ..config(6, 4, 24)
        });
        for id in 0..20 {
            sim.add(request(
                id,
                prompt(3 + id as usize % 9, id as u32 % 3),
                2 + id as usize % 10,
            ))
            .unwrap();
        }
        sim.run_until_idle(2_000);
        assert_eq!(sim.finished.len(), 20);
        assert!(sim.preemptions > 0, "the pool was meant to run out");
        assert_eq!(sim.sched.blocks_used(), 0);
        assert_eq!(sim.sched.pool.num_free(), sim.sched.blocks_total());
    }

    /// One request of the random workload.
    #[derive(Clone, Debug)]
    struct Arrival {
        step: usize,
        family: u32,
        len: usize,
        /// Tokens from here on are unique to the request; before, shared by its family.
        diverge: usize,
        max_tokens: usize,
        cancel_after: Option<usize>,
    }

    fn arrival() -> impl Strategy<Value = Arrival> {
        (
            0usize..30,
            0u32..3,
            1usize..30,
            0usize..30,
            1usize..12,
            prop::option::weighted(0.2, 0usize..15),
        )
            .prop_map(
                |(step, family, len, diverge, max_tokens, cancel_after)| Arrival {
                    step,
                    family,
                    len,
                    diverge,
                    max_tokens,
                    cancel_after,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn random_workloads_finish_every_request_without_leaks(
            num_blocks in 1usize..24,
            block_size in 1usize..6,
            max_batch_tokens in 1usize..40,
            max_seqs in 1usize..6,
            arrivals in prop::collection::vec(arrival(), 1..16),
        ) {
            let mut sim = Sim::new(SchedulerConfig {
                num_blocks,
                block_size,
                max_batch_tokens,
                max_seqs,
                max_context: 100_000,
            });
            let mut accepted = HashSet::new();
            let mut cancelled = HashSet::new();
            let last_arrival = arrivals.iter().map(|a| a.step).max().unwrap_or(0);
            let mut step = 0;
            while step <= last_arrival || sim.live() > 0 {
                prop_assert!(step < 5_000, "no progress");
                for (id, a) in arrivals.iter().enumerate().filter(|(_, a)| a.step == step) {
                    let id = id as u64;
                    let tokens = (0..a.len as u32)
                        .map(|i| if (i as usize) < a.diverge { a.family * 1000 + i } else { 50_000 + id as u32 * 100 + i })
                        .collect();
                    match sim.add(request(id, tokens, a.max_tokens)) {
                        Ok(()) => { accepted.insert(id); }
                        Err(SchedError::ExceedsCache { needed, limit }) => {
                            prop_assert_eq!(needed, a.len + a.max_tokens);
                            prop_assert!(needed > limit && limit == num_blocks * block_size);
                        }
                        Err(err) => prop_assert!(false, "unexpected refusal: {err}"),
                    }
                }
                for (id, a) in arrivals.iter().enumerate() {
                    let id = id as u64;
                    let due = a.cancel_after.is_some_and(|after| a.step + after == step);
                    if due && sim.tokens.contains_key(&id) {
                        let used = sim.sched.blocks_used();
                        sim.cancel(id);
                        prop_assert!(sim.sched.blocks_used() <= used);
                        cancelled.insert(id);
                    }
                }
                if sim.live() > 0 {
                    sim.step();
                }
                step += 1;
            }
            for id in &accepted {
                prop_assert!(cancelled.contains(id) || sim.finished.contains_key(id), "request {id} lost");
            }
            prop_assert_eq!(sim.sched.blocks_used(), 0);
            prop_assert_eq!(sim.sched.pool.num_free(), num_blocks);
            sim.check_books();
        }
    }
}
