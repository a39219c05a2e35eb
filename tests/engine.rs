//! The serving engine on tiny random models: continuous batching, preemption, prefix
//! caching, cancellation and seeded sampling give the tokens a request would get alone.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::sampling::SamplingParams;
use tessera_engine::{
    Coordinator, EngineConfig, EngineHandle, EngineOptions, Event, FinishReason, Request,
};
use tessera_model::synthetic;
use tessera_plan::{ModelShape, Strategy};

fn shape() -> ModelShape {
    ModelShape {
        hidden: 32,
        layers: 2,
        heads: 6,
        kv_heads: 2,
        head_dim: 8,
        intermediate: 40,
        vocab: 97,
        tied_embeddings: false,
        qkv_bias: false,
    }
}

fn engine(
    dir: &std::path::Path,
    tp: usize,
    kv_bytes: usize,
    config: &EngineConfig,
) -> EngineHandle {
    let plan = Strategy::Megatron.plan(&shape(), tp).unwrap();
    let options = EngineOptions {
        kv_cache_bytes: kv_bytes,
        block_size: 4,
        ..EngineOptions::default()
    };
    let coord = Coordinator::start(dir, plan, &options).unwrap();
    EngineHandle::start(coord, None, config).unwrap()
}

/// Collects a request's token ids and finish reason.
fn collect(
    mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> (Vec<u32>, FinishReason, usize) {
    let mut ids = Vec::new();
    while let Some(e) = events.blocking_recv() {
        match e {
            Event::Token { id, .. } => ids.push(id),
            Event::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
            Event::Finished { reason, usage, .. } => {
                assert_eq!(usage.completion_tokens, ids.len());
                return (ids, reason, usage.prompt_tokens);
            }
        }
    }
    panic!("event stream closed without Finished");
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        max_tokens,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

fn random_prompts(rng: &mut ChaCha8Rng, n: usize, max_len: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..=max_len);
            (0..len).map(|_| rng.random_range(0..97)).collect()
        })
        .collect()
}

/// Waits until the engine reports no running request and no used block (stats are
/// published after each step, so they trail the last event by at most one step).
fn wait_idle(e: &EngineHandle) -> tessera_engine::EngineStats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let s = e.stats();
        if s.blocks_used == 0 && s.running == 0 && s.waiting == 0 {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "engine did not free its blocks: {s:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn model_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape(), 21, 256).unwrap();
    tmp
}

#[test]
fn batched_requests_get_the_tokens_they_get_alone_at_tp_1_and_2() {
    let tmp = model_dir();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let prompts = random_prompts(&mut rng, 24, 40);
    let params: Vec<SamplingParams> = (0..prompts.len())
        .map(|i| {
            if i % 3 == 0 {
                SamplingParams {
                    temperature: 0.8,
                    top_p: 0.9,
                    seed: Some(i as u64),
                    max_tokens: 12,
                    ignore_eos: true,
                    ..SamplingParams::default()
                }
            } else {
                greedy(12)
            }
        })
        .collect();
    for tp in [1, 2] {
        let alone_engine = engine(tmp.path(), tp, 8 << 20, &EngineConfig::default());
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .zip(&params)
            .map(|(p, s)| {
                let sub = alone_engine
                    .submit_blocking(Request {
                        prompt: p.clone(),
                        params: s.clone(),
                    })
                    .unwrap();
                collect(sub.events).0
            })
            .collect();
        alone_engine.shutdown();
        // All at once, with a small step budget so prefills are chunked and mixed with decodes.
        let config = EngineConfig {
            max_batch_tokens: 24,
            max_seqs: 16,
        };
        let batched_engine = engine(tmp.path(), tp, 8 << 20, &config);
        let subs: Vec<_> = prompts
            .iter()
            .zip(&params)
            .map(|(p, s)| {
                batched_engine
                    .submit_blocking(Request {
                        prompt: p.clone(),
                        params: s.clone(),
                    })
                    .unwrap()
            })
            .collect();
        for (i, sub) in subs.into_iter().enumerate() {
            let (ids, reason, _) = collect(sub.events);
            assert_eq!(reason, FinishReason::Length);
            assert_eq!(
                ids, alone[i],
                "tp {tp} request {i}: batched tokens differ from alone"
            );
        }
        check_collective_stats(&wait_idle(&batched_engine), tp);
        batched_engine.shutdown();
    }
}

/// Collective time and traffic are measured per rank, per step and in total, and agree.
fn check_collective_stats(stats: &tessera_engine::EngineStats, tp: usize) {
    // Collective time and traffic are measured per rank (bytes differ where the
    // vocabulary splits unevenly: each rank writes its own slice of the logits).
    assert_eq!(stats.collective_seconds.len(), tp);
    assert_eq!(stats.collective_bytes.len(), tp);
    if tp > 1 {
        assert!(
            stats.collective_seconds.iter().all(|&s| s > 0.0),
            "{stats:?}"
        );
        assert!(stats.collective_bytes.iter().all(|&b| b > 0), "{stats:?}");
    }
    // Per step too: every step is one observation per rank, and the observations add
    // up to the cumulative time.
    assert_eq!(stats.collective_last_step_seconds.len(), tp);
    assert_eq!(stats.collective_step_seconds.len(), tp);
    assert!(stats.steps > 0);
    for (rank, h) in stats.collective_step_seconds.iter().enumerate() {
        assert_eq!(h.count(), stats.steps, "rank {rank}: {stats:?}");
        let total = stats.collective_seconds[rank];
        assert!(
            (h.sum - total).abs() <= 1e-9 + 1e-9 * total,
            "rank {rank}: {stats:?}"
        );
        assert!(stats.collective_last_step_seconds[rank] <= total);
    }
}

/// Every event of a request, in order.
fn events(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        let done = matches!(e, Event::Finished { .. });
        out.push(e);
        if done {
            return out;
        }
    }
    panic!("event stream closed without Finished");
}

/// log_softmax of one logits row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row
        .iter()
        .map(|&l| f64::from(l))
        .fold(f64::NEG_INFINITY, f64::max);
    let norm = max
        + row
            .iter()
            .map(|&l| (f64::from(l) - max).exp())
            .sum::<f64>()
            .ln();
    row.iter().map(|&l| f64::from(l) - norm).collect()
}

#[test]
fn prompt_logprobs_are_the_log_softmax_of_the_logits_before_each_prompt_token() {
    let tmp = model_dir();
    let vocab = shape().vocab;
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let prompt: Vec<u32> = (0..30).map(|_| rng.random_range(0..vocab as u32)).collect();
    let plan = Strategy::Megatron.plan(&shape(), 1).unwrap();
    let mut one = Coordinator::start(tmp.path(), plan, &EngineOptions::default()).unwrap();
    let rows = one.forward(&prompt, tessera_model::LogitRows::All).unwrap();
    drop(one);
    // Chunked prefill (8 tokens a step), after the same prompt filled the prefix cache.
    let config = EngineConfig {
        max_batch_tokens: 8,
        max_seqs: 16,
    };
    let e = engine(tmp.path(), 2, 8 << 20, &config);
    let plain = collect(
        e.submit_blocking(Request {
            prompt: prompt.clone(),
            params: greedy(3),
        })
        .unwrap()
        .events,
    )
    .0;
    for max_tokens in [0, 3] {
        let params = SamplingParams {
            prompt_logprobs: Some(3),
            ..greedy(max_tokens)
        };
        let got = events(
            e.submit_blocking(Request {
                prompt: prompt.clone(),
                params,
            })
            .unwrap()
            .events,
        );
        let Some(Event::PromptLogprobs(scores)) = got.first() else {
            panic!("prompt logprobs do not come first: {got:?}");
        };
        assert_eq!(scores.len(), prompt.len());
        assert_eq!(scores[0], None, "nothing precedes the first token");
        for (i, score) in scores.iter().enumerate().skip(1) {
            let lp = log_softmax(&rows[(i - 1) * vocab..i * vocab]);
            let score = score.as_ref().unwrap_or_else(|| panic!("no score at {i}"));
            let want = lp[prompt[i] as usize];
            assert!(
                (f64::from(score.logprob) - want).abs() < 1e-5,
                "position {i}"
            );
            let mut ids: Vec<u32> = (0..vocab as u32).collect();
            ids.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
            let top: Vec<u32> = score.top.iter().map(|&(id, _)| id).collect();
            assert_eq!(top, ids[..3], "position {i}");
        }
        let tokens: Vec<u32> = got
            .iter()
            .filter_map(|e| match e {
                Event::Token { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(tokens, plain[..max_tokens], "max_tokens {max_tokens}");
        match got.last() {
            Some(Event::Finished { reason, usage, .. }) => {
                assert_eq!(*reason, FinishReason::Length);
                assert_eq!(usage.completion_tokens, max_tokens);
            }
            other => panic!("{other:?}"),
        }
    }
    wait_idle(&e);
    e.shutdown();
}

#[test]
fn preemption_under_a_tiny_cache_changes_no_token_and_loses_no_request() {
    let tmp = model_dir();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let prompts = random_prompts(&mut rng, 16, 30);
    let roomy = engine(tmp.path(), 2, 8 << 20, &EngineConfig::default());
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            collect(
                roomy
                    .submit_blocking(Request {
                        prompt: p.clone(),
                        params: greedy(20),
                    })
                    .unwrap()
                    .events,
            )
            .0
        })
        .collect();
    roomy.shutdown();
    // Room for about 3 sequences at once: requests are preempted and recomputed.
    let block_bytes = 2 * 4 * 2 * (shape().kv_heads * 8) * 4;
    let tight = engine(tmp.path(), 2, block_bytes * 40, &EngineConfig::default());
    let subs: Vec<_> = prompts
        .iter()
        .map(|p| {
            tight
                .submit_blocking(Request {
                    prompt: p.clone(),
                    params: greedy(20),
                })
                .unwrap()
        })
        .collect();
    for (i, sub) in subs.into_iter().enumerate() {
        let (ids, _, _) = collect(sub.events);
        assert_eq!(ids, expected[i], "request {i} changed under preemption");
    }
    let stats = wait_idle(&tight);
    assert!(
        stats.preemptions > 0,
        "the cache was meant to be too small: {stats:?}"
    );
    tight.shutdown();
}

#[test]
fn a_request_that_can_never_fit_is_refused_at_submission() {
    let tmp = model_dir();
    let e = engine(tmp.path(), 1, 64 * 1024, &EngineConfig::default());
    let err = e
        .submit_blocking(Request {
            prompt: vec![1; 10],
            params: greedy(100_000),
        })
        .err()
        .expect("must be refused");
    assert!(err.to_string().contains("100"), "{err}");
    let err = e
        .submit_blocking(Request {
            prompt: vec![1; 3],
            params: SamplingParams {
                temperature: f32::NAN,
                ..greedy(3)
            },
        })
        .err()
        .expect("NaN temperature must be refused");
    assert!(err.to_string().contains("temperature"), "{err}");
    e.shutdown();
}

#[test]
fn cancelling_or_dropping_a_stream_frees_its_blocks() {
    let tmp = model_dir();
    let e = engine(tmp.path(), 2, 8 << 20, &EngineConfig::default());
    let long = greedy(200);
    let a = e
        .submit_blocking(Request {
            prompt: vec![5; 30],
            params: long.clone(),
        })
        .unwrap();
    let b = e
        .submit_blocking(Request {
            prompt: vec![6; 30],
            params: long,
        })
        .unwrap();
    let mut a_events = a.events;
    // Wait for a first token of a, then cancel a and drop b's stream.
    loop {
        if let Some(Event::Token { .. }) = a_events.blocking_recv() {
            break;
        }
    }
    e.cancel(a.id);
    drop(b.events);
    let mut reason = None;
    while let Some(ev) = a_events.blocking_recv() {
        if let Event::Finished { reason: r, .. } = ev {
            reason = Some(r);
        }
    }
    assert_eq!(reason, Some(FinishReason::Cancelled));
    wait_idle(&e);
    e.shutdown();
}

#[test]
fn a_repeated_prefix_is_served_from_the_cache_with_identical_tokens() {
    let tmp = model_dir();
    let e = engine(tmp.path(), 1, 8 << 20, &EngineConfig::default());
    let system: Vec<u32> = (0..24).map(|i| (i * 7 % 97) as u32).collect();
    let mut outs = Vec::new();
    for q in 0..4u32 {
        let mut prompt = system.clone();
        prompt.extend([q + 1, q + 2, q + 3]);
        outs.push(
            collect(
                e.submit_blocking(Request {
                    prompt,
                    params: greedy(8),
                })
                .unwrap()
                .events,
            )
            .0,
        );
    }
    let stats = e.stats();
    assert!(
        stats.prefix_hits >= 3 * 6,
        "24 shared tokens = 6 blocks, reused 3 times: {stats:?}"
    );
    e.shutdown();
    // Without any cache reuse (fresh engine per request) the tokens are the same.
    for (q, out) in outs.iter().enumerate() {
        let fresh = engine(tmp.path(), 1, 8 << 20, &EngineConfig::default());
        let mut prompt = system.clone();
        prompt.extend([q as u32 + 1, q as u32 + 2, q as u32 + 3]);
        let alone = collect(
            fresh
                .submit_blocking(Request {
                    prompt,
                    params: greedy(8),
                })
                .unwrap()
                .events,
        )
        .0;
        assert_eq!(
            &alone, out,
            "request {q} differs when served from the prefix cache"
        );
        fresh.shutdown();
    }
}

#[test]
fn stop_tokens_end_a_request_and_usage_counts_tokens() {
    let tmp = model_dir();
    let e = engine(tmp.path(), 1, 8 << 20, &EngineConfig::default());
    let free = collect(
        e.submit_blocking(Request {
            prompt: vec![3, 4, 5],
            params: greedy(10),
        })
        .unwrap()
        .events,
    )
    .0;
    let stop = free[4];
    let first = free.iter().position(|&t| t == stop).unwrap();
    let params = SamplingParams {
        stop_token_ids: vec![stop],
        ..greedy(10)
    };
    let (ids, reason, prompt_tokens) = collect(
        e.submit_blocking(Request {
            prompt: vec![3, 4, 5],
            params,
        })
        .unwrap()
        .events,
    );
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(ids, free[..first].to_vec());
    assert_eq!(prompt_tokens, 3);
    e.shutdown();
}

#[test]
fn handles_are_shareable_across_threads() {
    let tmp = model_dir();
    let e = Arc::new(engine(tmp.path(), 2, 8 << 20, &EngineConfig::default()));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                collect(
                    e.submit_blocking(Request {
                        prompt: vec![i + 1; 5],
                        params: greedy(6),
                    })
                    .unwrap()
                    .events,
                )
            })
        })
        .collect();
    for h in handles {
        let (ids, _, _) = h.join().unwrap();
        assert_eq!(ids.len(), 6);
    }
    e.shutdown();
}
