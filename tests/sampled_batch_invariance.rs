//! A seeded sampled request gets the same tokens alone (where the ranks pick its tokens
//! and return only ids) and batched with requests that need their logits rows (logprobs,
//! penalties, prompt logprobs: there the engine picks its tokens from the downloaded rows).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::sampling::SamplingParams;
use tessera_engine::{
    Coordinator, EngineConfig, EngineHandle, EngineOptions, Event, FinishReason, Request,
};
use tessera_model::synthetic;
use tessera_plan::Strategy;

fn plain(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: Some(40),
        top_p: 0.9,
        seed: Some(seed),
        max_tokens: 12,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

/// Companions whose rows must come to the host: logprobs, a penalty, prompt logprobs.
fn companions() -> Vec<SamplingParams> {
    let base = SamplingParams {
        max_tokens: 12,
        ignore_eos: true,
        ..SamplingParams::default()
    };
    vec![
        SamplingParams {
            logprobs: Some(2),
            ..base.clone()
        },
        SamplingParams {
            presence_penalty: 0.5,
            seed: Some(3),
            ..base.clone()
        },
        SamplingParams {
            prompt_logprobs: Some(1),
            temperature: 0.0,
            ..base
        },
    ]
}

/// Submits every request at once and returns each one's tokens.
fn tokens(engine: &EngineHandle, requests: &[(Vec<u32>, SamplingParams)]) -> Vec<Vec<u32>> {
    let subs: Vec<_> = requests
        .iter()
        .map(|(prompt, params)| {
            engine
                .submit_blocking(Request {
                    prompt: prompt.clone(),
                    params: params.clone(),
                })
                .unwrap()
        })
        .collect();
    subs.into_iter()
        .map(|mut sub| {
            let mut ids = Vec::new();
            loop {
                match sub.events.blocking_recv().expect("a Finished event") {
                    Event::Token { id, .. } => ids.push(id),
                    Event::PromptLogprobs(_) => {}
                    Event::Finished { reason, .. } => {
                        assert_eq!(reason, FinishReason::Length);
                        return ids;
                    }
                }
            }
        })
        .collect()
}

#[test]
fn seeded_sampled_tokens_do_not_depend_on_companions_that_need_logits() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let shape = synthetic::random_shape(&mut rng);
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape, 13, 128).unwrap();
    let vocab = shape.vocab as u32;
    let prompt = |rng: &mut ChaCha8Rng, len: usize| -> Vec<u32> {
        (0..len).map(|_| rng.random_range(0..vocab)).collect()
    };
    let targets: Vec<(Vec<u32>, SamplingParams)> = (0..4)
        .map(|seed| (prompt(&mut rng, 3 + 4 * seed as usize), plain(seed)))
        .collect();
    let others: Vec<(Vec<u32>, SamplingParams)> = companions()
        .into_iter()
        .map(|p| (prompt(&mut rng, 9), p))
        .collect();
    let options = EngineOptions {
        kv_cache_bytes: 4 << 20,
        block_size: 4,
        ..EngineOptions::default()
    };
    for tp in [1, 2] {
        let plan = Strategy::Megatron.plan(&shape, tp).unwrap();
        let coordinator = Coordinator::start(tmp.path(), plan, &options).unwrap();
        let engine = EngineHandle::start(coordinator, None, &EngineConfig::default()).unwrap();
        let alone: Vec<Vec<u32>> = targets
            .iter()
            .map(|t| tokens(&engine, std::slice::from_ref(t)).remove(0))
            .collect();
        // The draws are real: different seeds give different tokens.
        assert!(alone.windows(2).any(|w| w[0] != w[1]), "{alone:?}");
        for (i, target) in targets.iter().enumerate() {
            // With each companion, and with all of them at once.
            let mut batches: Vec<Vec<(Vec<u32>, SamplingParams)>> = others
                .iter()
                .map(|o| vec![o.clone(), target.clone()])
                .collect();
            batches.push(others.iter().chain([target]).cloned().collect());
            for batch in batches {
                let got = tokens(&engine, &batch);
                assert_eq!(
                    got.last(),
                    Some(&alone[i]),
                    "tp {tp} request {i} beside {:?}",
                    batch.iter().map(|b| &b.1).collect::<Vec<_>>()
                );
            }
        }
        engine.shutdown();
    }
}
