//! The one forward pass (`RankModel` over `Backend`) driven directly on CPU ranks: for a
//! tensor-parallel plan and its sequence-parallel variant, in both reduce modes, every
//! rank's logits match one rank's (the same bits in the deterministic mode, rounding in the
//! fast one) and the bytes each rank's communicator publishes equal the cost model's.
//! Steps of different sizes run back to back, so buffers reused from a larger step are
//! exercised too.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_comm::{Communicator, ThreadGroup};
use tessera_model::{
    synthetic, CpuBackend, LogitRows, PagedKvCache, RankModel, StepSeq, WeightDtype,
};
use tessera_plan::cost::collective_bytes_per_rank;
use tessera_plan::{ReduceMode, ShardPlan, Strategy};

/// One step: `(tokens, start, logits)` per sequence; sequence `i` owns blocks `8i..8i+8`.
type Step = Vec<(Vec<u32>, usize, LogitRows)>;

const BLOCK: usize = 4;
const BLOCKS_PER_SEQ: usize = 8;

/// Runs `steps` on every rank of `plan`; returns rank 0's logits of each step and each
/// rank's published bytes of each step.
fn run(
    dir: &std::path::Path,
    plan: &ShardPlan,
    reduce: ReduceMode,
    steps: &[Step],
) -> (Vec<Vec<f32>>, Vec<Vec<u64>>) {
    let comms = ThreadGroup::create(plan.world_size);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, mut comm)| {
                scope.spawn(move || {
                    let backend = CpuBackend::new(1).unwrap();
                    let config = tessera_model::ModelConfig::from_dir(dir).unwrap();
                    let files = tessera_model::WeightFiles::open(dir).unwrap();
                    let model = RankModel::load_on(
                        &backend,
                        &config,
                        &files,
                        plan,
                        rank,
                        WeightDtype::F32,
                        reduce,
                    )
                    .unwrap();
                    let n_blocks = 3 * BLOCKS_PER_SEQ;
                    let mut cache = PagedKvCache::new(model.kv_widths(), n_blocks, BLOCK);
                    let tables: Vec<Vec<u32>> = (0..3)
                        .map(|i| {
                            (i * BLOCKS_PER_SEQ as u32..(i + 1) * BLOCKS_PER_SEQ as u32).collect()
                        })
                        .collect();
                    let mut logits = Vec::new();
                    let mut bytes = Vec::new();
                    for step in steps {
                        let seqs: Vec<StepSeq> = step
                            .iter()
                            .zip(&tables)
                            .map(|((tokens, start, rows), table)| StepSeq {
                                id: 0,
                                tokens: tokens.to_vec(),
                                start: *start,
                                block_table: table.clone(),
                                logits: *rows,
                            })
                            .collect();
                        let before = comm.stats().bytes_moved;
                        logits.push(
                            model
                                .forward_batch(&backend, &mut comm, &mut cache, &seqs)
                                .unwrap(),
                        );
                        bytes.push(comm.stats().bytes_moved - before);
                    }
                    (logits, bytes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let logits = results[0].0.clone();
    for (rank, (other, _)) in results.iter().enumerate() {
        assert_eq!(other.len(), logits.len(), "rank {rank}");
    }
    let steps_bytes = (0..steps.len())
        .map(|s| results.iter().map(|(_, b)| b[s]).collect())
        .collect();
    (logits, steps_bytes)
}

#[test]
fn shared_forward_matches_one_rank_and_the_cost_model_in_both_reduce_modes_and_with_sequence_parallelism(
) {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5f0d);
    for case in 0..2 {
        let shape = synthetic::random_shape(&mut rng);
        let tmp = tempfile::tempdir().unwrap();
        synthetic::write_random_model(tmp.path(), &shape, 100 + case, 64).unwrap();
        let len: usize = rng.random_range(3..9);
        let prompt: Vec<u32> = (0..len)
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        let next: Vec<u32> = (0..3)
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        // A prefill of 3 sequences (last rows), their decode step, then one sequence's
        // every row (scoring a shorter step after a larger one reuses the buffers).
        let steps: Vec<Step> = vec![
            (0..3)
                .map(|_| (prompt.clone(), 0, LogitRows::Last))
                .collect(),
            next.iter()
                .map(|&t| (vec![t], len, LogitRows::Last))
                .collect(),
            vec![(prompt[1..].to_vec(), 0, LogitRows::All)],
        ];
        let expected_rows = [(3 * len, 3), (3, 3), (len - 1, len - 1)];
        let one = Strategy::Megatron.plan(&shape, 1).unwrap();
        let (want, _) = run(tmp.path(), &one, ReduceMode::Deterministic, &steps);
        for strategy in [Strategy::Megatron, Strategy::MegatronSp] {
            for tp in 2..=4 {
                let plan = strategy.plan(&shape, tp).unwrap();
                assert_eq!(plan.sequence_parallel, strategy == Strategy::MegatronSp);
                for reduce in [ReduceMode::Deterministic, ReduceMode::Fast] {
                    let what = format!(
                        "case {case}, {}, tp {tp}, {}",
                        strategy.name(),
                        reduce.name()
                    );
                    let (got, bytes) = run(tmp.path(), &plan, reduce, &steps);
                    for (s, &(tokens, rows)) in expected_rows.iter().enumerate() {
                        let predicted = collective_bytes_per_rank(&plan, reduce, tokens, rows);
                        assert_eq!(bytes[s], predicted, "step {s} bytes, {what}");
                        assert!(
                            bytes[s].iter().any(|&b| b > 0),
                            "step {s}: nothing moved, {what}"
                        );
                        assert_eq!(got[s].len(), want[s].len(), "step {s}, {what}");
                        if reduce == ReduceMode::Deterministic {
                            let bits =
                                |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&got[s]), bits(&want[s]), "step {s} logits, {what}");
                        } else {
                            let diff = got[s]
                                .iter()
                                .zip(&want[s])
                                .map(|(a, b)| (a - b).abs())
                                .fold(0.0f32, f32::max);
                            assert!(diff < 1e-3, "step {s} logits differ by {diff}, {what}");
                        }
                    }
                }
            }
        }
    }
}
