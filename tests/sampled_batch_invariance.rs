//! A seeded sampled request gets the same tokens alone (where the ranks pick its tokens
//! and return only ids) and batched with requests that need their logits rows (logprobs,
//! penalties, prompt logprobs: there the engine picks its tokens from the downloaded rows);
//! and a coordinator's ids-only steps pick what the shared rule picks from logits rows.

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

/// `step_choose` (ids only, what a device rank returns) picks exactly the token the shared
/// rule (`tessera_model::choose`) picks from each row `step` returns, greedy and sampled
/// rows mixed, for a batch mixing a prompt chunk and decode rows, at tp 1 and 3.
#[test]
fn choose_steps_return_the_chosen_token_of_every_logits_row() {
    use tessera_engine::StepSeq;
    use tessera_model::{LogitRows, RowChoice};
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let shape = synthetic::random_shape(&mut rng);
    let dir = tempfile::tempdir().unwrap();
    synthetic::write_random_model(dir.path(), &shape, 21, 256).unwrap();
    let vocab = shape.vocab;
    for tp in [1, 3] {
        let plan = Strategy::Megatron.plan(&shape, tp).unwrap();
        let options = EngineOptions {
            kv_cache_bytes: 1 << 20,
            block_size: 4,
            ..EngineOptions::default()
        };
        // Two coordinators over the same inputs: one returns logits, the other ids.
        let mut a = Coordinator::start(dir.path(), plan.clone(), &options).unwrap();
        let mut b = Coordinator::start(dir.path(), plan, &options).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(tp as u64);
        let prompts: Vec<Vec<u32>> = (0..4)
            .map(|i| {
                (0..3 + 2 * i)
                    .map(|_| rng.random_range(0..vocab as u32))
                    .collect()
            })
            .collect();
        let mut tokens = prompts.clone();
        let mut picked = 0;
        for step in 0..6 {
            let seqs: Vec<StepSeq> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| StepSeq {
                    id: i as u64,
                    tokens: if step == 0 {
                        t.clone()
                    } else {
                        vec![*t.last().unwrap()]
                    },
                    start: if step == 0 { 0 } else { t.len() - 1 },
                    block_table: (i as u32 * 8..i as u32 * 8 + 8).collect(),
                    logits: if step == 0 && i == 2 {
                        LogitRows::All
                    } else {
                        LogitRows::Last
                    },
                })
                .collect();
            let logits = a.step(seqs.clone()).unwrap();
            let rows = logits.len() / vocab;
            // Every third row greedy, the others sampled with their own filters.
            let choices: Vec<RowChoice> = (0..rows)
                .map(|r| match r % 3 {
                    0 => RowChoice::GREEDY,
                    k => RowChoice {
                        temperature: 0.5 * k as f32,
                        top_k: 20 * (k - 1),
                        top_p: 1.0 - 0.2 * k as f32,
                        uniform: rng.random::<f32>(),
                    },
                })
                .collect();
            let ids = b.step_choose(seqs, choices.clone()).unwrap();
            let want: Vec<u32> = logits
                .chunks_exact(vocab)
                .zip(&choices)
                .map(|(row, c)| tessera_model::choose(row, c))
                .collect();
            assert_eq!(ids, want, "tp {tp} step {step}");
            picked += ids.len();
            // Continue each sequence with its last row's token.
            let mut row = 0;
            for (i, t) in tokens.iter_mut().enumerate() {
                row += if step == 0 && i == 2 {
                    prompts[2].len()
                } else {
                    1
                };
                t.push(ids[row - 1]);
            }
        }
        assert!(picked > 24, "rows compared: {picked}");
    }
}
