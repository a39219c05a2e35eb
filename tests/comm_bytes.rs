//! The cost model's collective bytes per rank equal what the communicator counts
//! (`bytes_moved`: bytes a rank publishes), for every strategy on 1..6 ranks of tiny random
//! models, in prefill and decode steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::{Coordinator, EngineOptions};
use tessera_model::{synthetic, LogitRows};
use tessera_plan::cost::{collective_bytes_per_rank, ReduceMode};
use tessera_plan::Strategy;

/// The reduction the engine runs by default. The communicator's all-reduce publishes every
/// rank's whole buffer; switch to `Deterministic` when the engine's default becomes the
/// fixed-chunk reduction.
const ENGINE_REDUCE: ReduceMode = ReduceMode::Fast;

/// Runs one forward pass and returns the bytes each rank published in it.
fn step_bytes(engine: &mut Coordinator, tokens: &[u32], rows: LogitRows) -> Vec<u64> {
    let before: Vec<u64> = engine.comm_stats().iter().map(|s| s.bytes_moved).collect();
    engine.forward(tokens, rows).unwrap();
    engine
        .comm_stats()
        .iter()
        .zip(before)
        .map(|(s, b)| s.bytes_moved - b)
        .collect()
}

#[test]
fn predicted_collective_bytes_equal_measured_for_every_strategy_and_rank_count() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xc057);
    for case in 0..3 {
        let shape = synthetic::random_shape(&mut rng);
        let tmp = tempfile::tempdir().unwrap();
        synthetic::write_random_model(tmp.path(), &shape, case, 64).unwrap();
        let prompt: Vec<u32> = (0..rng.random_range(2..10))
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        for name in Strategy::NAMES {
            let strategy = Strategy::parse(name).unwrap();
            for tp in 1..=6 {
                let plan = strategy.plan(&shape, tp).unwrap();
                let mut engine =
                    Coordinator::start(tmp.path(), plan.clone(), &EngineOptions::default())
                        .unwrap();
                let n = prompt.len();
                let what = format!("case {case}, {name}, tp {tp}");
                // Prefill with every row's logits, then a decode step with the last row's.
                let got = step_bytes(&mut engine, &prompt, LogitRows::All);
                let want = collective_bytes_per_rank(&plan, ENGINE_REDUCE, n, n);
                assert_eq!(got, want, "prefill, {what}");
                let got = step_bytes(&mut engine, &prompt[..1], LogitRows::Last);
                let want = collective_bytes_per_rank(&plan, ENGINE_REDUCE, 1, 1);
                assert_eq!(got, want, "decode, {what}");
                if tp > 1 && strategy != Strategy::Replicated {
                    assert!(got.iter().any(|&b| b > 0), "{what}: nothing moved");
                }
            }
        }
    }
}
