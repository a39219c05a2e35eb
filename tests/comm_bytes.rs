//! The cost model's collective bytes per rank equal what the communicator counts
//! (`bytes_moved`: bytes a rank publishes), for every strategy on 1..6 ranks of tiny random
//! models, in both reduction modes, for prefill and decode steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::{Coordinator, EngineOptions, StepSeq};
use tessera_model::{synthetic, LogitRows};
use tessera_plan::cost::{collective_bytes_per_rank, ReduceMode};
use tessera_plan::Strategy;

/// Runs one step and returns the bytes each rank published in it.
fn step_bytes(engine: &mut Coordinator, seqs: Vec<StepSeq>) -> Vec<u64> {
    let before: Vec<u64> = engine.comm_stats().iter().map(|s| s.bytes_moved).collect();
    engine.step(seqs).unwrap();
    engine
        .comm_stats()
        .iter()
        .zip(before)
        .map(|(s, b)| s.bytes_moved - b)
        .collect()
}

/// `n` sequences of `len` tokens starting at `start`, in blocks `n_blocks` apart.
fn seqs(tokens: &[u32], n: usize, start: usize, rows: LogitRows, n_blocks: u32) -> Vec<StepSeq> {
    (0..n)
        .map(|i| StepSeq {
            id: i as u64,
            tokens: tokens.to_vec(),
            start,
            block_table: (i as u32 * n_blocks..(i as u32 + 1) * n_blocks).collect(),
            logits: rows,
        })
        .collect()
}

#[test]
fn predicted_collective_bytes_equal_measured_for_every_strategy_rank_count_and_reduction() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc057);
    for case in 0..2 {
        let shape = synthetic::random_shape(&mut rng);
        let tmp = tempfile::tempdir().unwrap();
        synthetic::write_random_model(tmp.path(), &shape, case, 64).unwrap();
        let len: usize = rng.random_range(2..10);
        let prompt: Vec<u32> = (0..len)
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        for name in Strategy::NAMES {
            let strategy = Strategy::parse(name).unwrap();
            for tp in 1..=6 {
                for reduce in [ReduceMode::Deterministic, ReduceMode::Fast] {
                    let plan = strategy.plan(&shape, tp).unwrap();
                    let options = EngineOptions {
                        reduce,
                        ..EngineOptions::default()
                    };
                    let mut engine =
                        Coordinator::start(tmp.path(), plan.clone(), &options).unwrap();
                    let blocks = (len + 1).div_ceil(engine.block_size()) as u32;
                    let what = format!("case {case}, {name}, tp {tp}, {}", reduce.name());
                    // One sequence with every row's logits, then 3 sequences' prefill with
                    // their last rows' logits, then a decode step of the 3.
                    let got = step_bytes(&mut engine, seqs(&prompt, 1, 0, LogitRows::All, blocks));
                    let want = collective_bytes_per_rank(&plan, reduce, len, len);
                    assert_eq!(got, want, "one sequence, all logits, {what}");
                    let got = step_bytes(&mut engine, seqs(&prompt, 3, 0, LogitRows::Last, blocks));
                    let want = collective_bytes_per_rank(&plan, reduce, 3 * len, 3);
                    assert_eq!(got, want, "prefill of 3, {what}");
                    let got = step_bytes(
                        &mut engine,
                        seqs(&prompt[..1], 3, len, LogitRows::Last, blocks),
                    );
                    let want = collective_bytes_per_rank(&plan, reduce, 3, 3);
                    assert_eq!(got, want, "decode of 3, {what}");
                    if tp > 1 && strategy != Strategy::Replicated {
                        assert!(got.iter().any(|&b| b > 0), "{what}: nothing moved");
                    }
                }
            }
        }
    }
}
