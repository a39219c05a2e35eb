//! The real model through the serving engine: every reference prompt (plain and chat)
//! gives Hugging Face's greedy tokens alone and inside a batch of 32 requests, at 1-4
//! ranks, and its log-probabilities are bit-identical alone and batched.

mod common;

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tessera_engine::sampling::SamplingParams;
use tessera_engine::{Coordinator, EngineConfig, EngineHandle, EngineOptions, Event, Request};
use tessera_model::{ModelConfig, TextTokenizer};
use tessera_plan::Strategy;

struct Case {
    name: String,
    prompt: Vec<u32>,
    greedy: Vec<u32>,
    margins: Vec<f64>,
}

fn cases() -> Vec<Case> {
    let text =
        std::fs::read_to_string(common::reference_dir().join("reference_public.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for r in reference["results"].as_array().unwrap() {
        for form in ["plain", "chat"] {
            let f = &r[form];
            out.push(Case {
                name: format!("{} {form}", r["id"].as_str().unwrap()),
                prompt: ids(&f["prompt_ids"]),
                greedy: ids(&f["greedy_ids"]),
                margins: f["greedy_margin"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_f64().unwrap())
                    .collect(),
            });
        }
    }
    out
}

type Trace = (Vec<u32>, Vec<(f32, Vec<(u32, f32)>)>);

fn run_all(engine: &EngineHandle, prompts: &[Vec<u32>]) -> Vec<Trace> {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 32,
        ignore_eos: true,
        logprobs: Some(3),
        ..SamplingParams::default()
    };
    let subs: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .submit_blocking(Request {
                    prompt: p.clone(),
                    params: params.clone(),
                })
                .unwrap()
        })
        .collect();
    subs.into_iter()
        .map(|mut s| {
            let mut ids = Vec::new();
            let mut lps = Vec::new();
            while let Some(e) = s.events.blocking_recv() {
                match e {
                    Event::Token { id, logprobs, .. } => {
                        ids.push(id);
                        let l = logprobs.unwrap();
                        lps.push((l.logprob, l.top));
                    }
                    Event::Finished { .. } => break,
                    Event::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
                }
            }
            (ids, lps)
        })
        .collect()
}

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
