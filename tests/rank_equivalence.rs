//! Tiny random-weight models split over N ranks give the same logits as on one rank.
//!
//! Shapes are random, with head, intermediate and vocabulary sizes that rarely divide the
//! rank count, so uneven splits and key/value-head replication are exercised; rank counts
//! beyond the number of heads leave some ranks without heads.
//!
//! With the default deterministic reduction the logits have the same bits at every rank
//! count and for every strategy (with an f32 or a bf16 KV cache); with `--fast-reduce`
//! they agree to rounding.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::{Coordinator, EngineOptions};
use tessera_model::{synthetic, KvDtype, LogitRows};
use tessera_plan::{ReduceMode, Strategy};

fn logits(
    dir: &std::path::Path,
    shape: &tessera_plan::ModelShape,
    strategy: Strategy,
    tp: usize,
    prompt: &[u32],
    decode: &[u32],
) -> Vec<f32> {
    logits_with(
        dir,
        shape,
        strategy,
        tp,
        prompt,
        decode,
        ReduceMode::Deterministic,
    )
}

fn logits_with(
    dir: &std::path::Path,
    shape: &tessera_plan::ModelShape,
    strategy: Strategy,
    tp: usize,
    prompt: &[u32],
    decode: &[u32],
    reduce: ReduceMode,
) -> Vec<f32> {
    let plan = strategy.plan(shape, tp).unwrap();
    let options = EngineOptions {
        reduce,
        ..EngineOptions::default()
    };
    let mut engine = Coordinator::start(dir, plan, &options).unwrap();
    let mut out = engine.forward(prompt, LogitRows::All).unwrap();
    for &t in decode {
        out.extend(engine.forward(&[t], LogitRows::Last).unwrap());
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn random_models_on_1_to_6_ranks_give_the_bits_of_one_rank() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x7e55e7a);
    for case in 0..10 {
        let shape = synthetic::random_shape(&mut rng);
        let tmp = tempfile::tempdir().unwrap();
        synthetic::write_random_model(tmp.path(), &shape, case, 64).unwrap();
        let len = rng.random_range(1..12);
        let prompt: Vec<u32> = (0..len)
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        let decode: Vec<u32> = (0..3)
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        let one = logits(tmp.path(), &shape, Strategy::Megatron, 1, &prompt, &decode);
        assert!(one.iter().all(|v| v.is_finite()));
        let spread = one.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            spread > 0.1,
            "case {case}: logits are too flat to test anything"
        );
        let fast = ReduceMode::Fast;
        let one_fast = logits_with(
            tmp.path(),
            &shape,
            Strategy::Megatron,
            1,
            &prompt,
            &decode,
            fast,
        );
        for tp in 2..=6 {
            let many = logits(tmp.path(), &shape, Strategy::Megatron, tp, &prompt, &decode);
            assert!(
                bits(&one) == bits(&many),
                "case {case} {shape:?}: tp {tp} differs from tp 1 by {}",
                max_abs_diff(&one, &many)
            );
            let many_fast = logits_with(
                tmp.path(),
                &shape,
                Strategy::Megatron,
                tp,
                &prompt,
                &decode,
                fast,
            );
            let diff = max_abs_diff(&one_fast, &many_fast);
            assert!(
                diff < 1e-4,
                "case {case} {shape:?}: fast reduce at tp {tp} differs from tp 1 by {diff}"
            );
            assert!(max_abs_diff(&one, &many_fast) < 1e-4);
            let sp = logits(
                tmp.path(),
                &shape,
                Strategy::MegatronSp,
                tp,
                &prompt,
                &decode,
            );
            assert!(
                bits(&one) == bits(&sp),
                "case {case} {shape:?}: megatron-sp at tp {tp} differs from tp 1 by {}",
                max_abs_diff(&one, &sp)
            );
        }
    }
}

#[test]
fn every_strategy_matches_one_rank_on_a_random_model() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let shape = synthetic::random_shape(&mut rng);
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape, 7, 64).unwrap();
    let prompt: Vec<u32> = (0..7).map(|i| (i * 5 % shape.vocab) as u32).collect();
    let one = logits(tmp.path(), &shape, Strategy::Megatron, 1, &prompt, &[1, 2]);
    for name in Strategy::NAMES {
        let strategy = Strategy::parse(name).unwrap();
        for tp in [2, 3, 5] {
            let many = logits(tmp.path(), &shape, strategy, tp, &prompt, &[1, 2]);
            assert!(
                bits(&one) == bits(&many),
                "{name} at tp {tp} differs from tp 1 by {}",
                max_abs_diff(&one, &many)
            );
        }
    }
}

#[test]
fn prefill_and_token_by_token_decode_give_the_same_logits() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let shape = synthetic::random_shape(&mut rng);
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape, 3, 64).unwrap();
    let prompt: Vec<u32> = (0..9).map(|i| (i * 7 % shape.vocab) as u32).collect();
    let plan = Strategy::Megatron.plan(&shape, 2).unwrap();
    let mut engine = Coordinator::start(tmp.path(), plan, &EngineOptions::default()).unwrap();
    let all = engine.forward(&prompt, LogitRows::All).unwrap();
    engine.reset().unwrap();
    let mut stepwise = Vec::new();
    for &t in &prompt {
        stepwise.extend(engine.forward(&[t], LogitRows::Last).unwrap());
    }
    // The fixed reduction order makes a row's logits independent of how many rows ran with it.
    assert_eq!(all, stepwise);
}

#[test]
fn a_bf16_kv_cache_gives_the_bits_of_one_rank_on_1_to_5_ranks() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xb16);
    for case in 0..4 {
        let shape = synthetic::random_shape(&mut rng);
        let tmp = tempfile::tempdir().unwrap();
        synthetic::write_random_model(tmp.path(), &shape, 100 + case, 64).unwrap();
        let prompt: Vec<u32> = (0..rng.random_range(2..12))
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        let run = |tp: usize, kv: KvDtype| {
            let plan = Strategy::Megatron.plan(&shape, tp).unwrap();
            let options = EngineOptions {
                kv_dtype: Some(kv),
                ..EngineOptions::default()
            };
            let mut engine = Coordinator::start(tmp.path(), plan, &options).unwrap();
            let mut out = engine.forward(&prompt, LogitRows::All).unwrap();
            for &t in &prompt[..2] {
                out.extend(engine.forward(&[t], LogitRows::Last).unwrap());
            }
            out
        };
        let one = run(1, KvDtype::Bf16);
        assert_ne!(
            bits(&one),
            bits(&run(1, KvDtype::F32)),
            "case {case}: bf16 = f32"
        );
        for tp in 2..=5 {
            let many = run(tp, KvDtype::Bf16);
            assert!(
                bits(&one) == bits(&many),
                "case {case} {shape:?}: bf16 KV at tp {tp} differs from tp 1 by {}",
                max_abs_diff(&one, &many)
            );
        }
    }
}
