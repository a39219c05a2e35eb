//! Tests of the scheduler: admission, chunking, preemption, prefix sharing.

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
    /// Prefill cap for [`Scheduler::schedule_paced`]; `None` plans with `schedule`.
    cap: Option<usize>,
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
            cap: None,
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

    fn slot(&self, table: &[u32], pos: usize) -> usize {
        let bs = self.sched.config.block_size;
        table[pos / bs] as usize * bs + pos % bs
    }

    fn step(&mut self) -> StepPlan {
        let plan = match self.cap {
            Some(cap) => self.sched.schedule_paced(|_| cap),
            None => self.sched.schedule(),
        };
        self.steps += 1;
        self.preemptions += plan.preempted.len();
        self.check_plan(&plan);
        for seq in &plan.seqs {
            let fp = fingerprints(&self.tokens[&seq.id]);
            let end = seq.start + seq.tokens.len();
            for (pos, &value) in fp.iter().enumerate().take(end).skip(seq.start) {
                let slot = self.slot(&seq.block_table, pos);
                self.kv[slot] = Some(value);
            }
        }
        for seq in plan.seqs.iter().filter(|seq| seq.logits == LogitRows::Last) {
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
        let mut writer: HashMap<u32, u64> = HashMap::new();
        for seq in &plan.seqs {
            let tokens = &self.tokens[&seq.id];
            let end = seq.start + seq.tokens.len();
            assert!(!seq.tokens.is_empty());
            assert_eq!(seq.tokens, tokens[seq.start..end]);
            assert_eq!(seq.logits == LogitRows::Last, end == tokens.len());
            assert!(seq.block_table.len() * config.block_size >= end);
            let fp = fingerprints(tokens);
            for (pos, &value) in fp.iter().enumerate().take(seq.start) {
                let slot = self.slot(&seq.block_table, pos);
                assert_eq!(
                    self.kv[slot],
                    Some(value),
                    "seq {} reads a wrong K/V at {pos}",
                    seq.id
                );
            }
            for pos in seq.start..end {
                let block = seq.block_table[pos / config.block_size];
                assert_eq!(
                    self.sched.pool.ref_count(BlockId(block)),
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
            (seq.start, seq.tokens.len(), seq.logits == LogitRows::Last)
        })
        .collect();
    assert_eq!(chunks, [(0, 16, false), (16, 16, false), (32, 8, true)]);
    let decode = sim.step();
    assert_eq!((decode.seqs[0].start, decode.seqs[0].tokens.len()), (40, 1));
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
    assert_eq!((first.seqs[0].start, first.seqs[0].tokens.len()), (0, 40));
    let before = sim.sched.prefix_stats();
    sim.add(request(2, shared, 4)).unwrap();
    let plan = sim.step();
    let second = plan.seqs.iter().find(|s| s.id == 2).unwrap();
    // Blocks 0 and 1 (tokens 0..32) are shared; tokens 32..40 are computed.
    assert_eq!((second.start, second.tokens.len()), (32, 8));
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
    assert_eq!((plan.seqs[0].start, plan.seqs[0].tokens.len()), (4, 4));
    assert_eq!(plan.seqs[0].logits, LogitRows::Last);
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
    assert_eq!((plan.seqs[0].start, plan.seqs[0].tokens.len()), (0, 8));
    assert_eq!(plan.seqs[0].logits, LogitRows::Last);
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
    assert_eq!(resumed.logits, LogitRows::Last);
    assert_eq!(resumed.start + resumed.tokens.len(), 5);
    assert!(resumed.start < 5);
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

#[path = "scheduler_pacing_tests.rs"]
mod pacing;
