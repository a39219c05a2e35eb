//! The real model through the serving engine: every reference prompt (plain and chat)
//! gives Hugging Face's greedy tokens alone and inside a batch of 32 requests, at 1-4
//! ranks, and its log-probabilities are bit-identical alone and batched.

mod common;

use std::sync::Arc;

use common::engine_ref::{cases, run_all, Trace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::{Coordinator, EngineConfig, EngineHandle, EngineOptions};
use tessera_model::{ModelConfig, TextTokenizer};
use tessera_plan::Strategy;

fn check(tp: usize) {
    let dir = common::default_model();
    let config = ModelConfig::from_dir(dir).unwrap();
    let tokenizer = Arc::new(TextTokenizer::from_dir(dir).unwrap());
    let plan = Strategy::Megatron.plan(&config.shape, tp).unwrap();
    let coord = Coordinator::start(dir, plan, &EngineOptions::default()).unwrap();
    let engine = EngineHandle::start(coord, Some(tokenizer), &EngineConfig::default()).unwrap();
    let cases = cases();
    // Alone: one request at a time.
    let alone: Vec<Trace> = cases
        .iter()
        .map(|c| run_all(&engine, std::slice::from_ref(&c.prompt)).remove(0))
        .collect();
    // Batched: the reference prompts spread among 20 random others, 32 requests at once.
    let mut rng = ChaCha8Rng::seed_from_u64(tp as u64);
    let mut prompts: Vec<Vec<u32>> = (0..20)
        .map(|_| {
            let len = rng.random_range(4..80);
            (0..len).map(|_| rng.random_range(100..49000)).collect()
        })
        .collect();
    let mut slots = Vec::new();
    for c in &cases {
        let at = rng.random_range(0..=prompts.len());
        prompts.insert(at, c.prompt.clone());
        for s in slots.iter_mut() {
            if *s >= at {
                *s += 1;
            }
        }
        slots.push(at);
    }
    assert_eq!(prompts.len(), 32);
    let batched = run_all(&engine, &prompts);
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let (ids, _) = &alone[i];
        if let Some(step) = (0..32).find(|&s| ids[s] != c.greedy[s]) {
            if !c.margins[..=step].iter().any(|&m| m < 1e-3) {
                failures.push(format!(
                    "tp {tp} {}: token {step} is {} not {}",
                    c.name, ids[step], c.greedy[step]
                ));
            }
        }
        if batched[slots[i]] != alone[i] {
            failures.push(format!(
                "tp {tp} {}: batched tokens or logprobs differ from alone",
                c.name
            ));
        }
    }
    engine.shutdown();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn engine_matches_reference_alone_and_in_a_batch_of_32_at_tp1() {
    check(1);
}

#[test]
fn engine_matches_reference_alone_and_in_a_batch_of_32_at_tp2() {
    check(2);
}

#[test]
fn engine_matches_reference_alone_and_in_a_batch_of_32_at_tp3() {
    check(3);
}

#[test]
fn engine_matches_reference_alone_and_in_a_batch_of_32_at_tp4() {
    check(4);
}
