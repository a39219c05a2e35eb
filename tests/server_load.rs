//! A bounded load test of `tessera serve` on loopback with the real model: 500 streaming
//! requests from 64 concurrent clients (chat and completions, short prompts, max_tokens
//! 16-32), one in ten hanging up at a random point. Every request that is not abandoned
//! completes with usage equal to the tokens it streamed; afterwards the KV cache is empty
//! again and the server's resident memory is within 10% of its level after warm-up.

mod common;
#[path = "openai_client/harness.rs"]
mod harness;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{EventStream, Server, MODEL};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tessera_model::{ChatMessage, TextTokenizer};

const CLIENTS: usize = 64;
const REQUESTS: usize = 500;
/// The first wave, after which resident memory is the baseline.
const WARM_UP: usize = CLIENTS;
/// The whole test must stay well under three minutes.
const BUDGET: Duration = Duration::from_secs(170);

/// One planned request.
struct Plan {
    body: Value,
    path: &'static str,
    prompt_tokens: usize,
    max_tokens: usize,
    /// Hang up after this many events (0: right after the response head).
    disconnect_after: Option<usize>,
}

fn plans(tokenizer: &TextTokenizer) -> Vec<Plan> {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    (0..REQUESTS)
        .map(|i| {
            let max_tokens = rng.random_range(16..=32);
            let disconnect_after = (rng.random_range(0..10) == 0).then(|| rng.random_range(0..=max_tokens));
            let (path, body, prompt_tokens) = if i % 2 == 0 {
                let len = rng.random_range(4..=24);
                let ids: Vec<u32> = (0..len).map(|_| rng.random_range(100..40_000)).collect();
                let body = json!({"model": MODEL, "prompt": ids, "max_tokens": max_tokens});
                ("/v1/completions", body, len)
            } else {
                let content = format!("Tell me one fact about the number {}.", rng.random_range(0..1000));
                let messages = [ChatMessage { role: "user".into(), content: content.clone() }];
                let text = tokenizer.render_chat(&messages, true).unwrap();
                let n = tokenizer.encode(&text).unwrap().len();
                let body = json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
                                  "max_tokens": max_tokens, "logprobs": true});
                ("/v1/chat/completions", body, n)
            };
            let mut body = body;
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
            body["temperature"] = json!(0.7);
            body["seed"] = json!(i);
            if path == "/v1/completions" {
                body["logprobs"] = json!(0);
            }
            Plan { body, path, prompt_tokens, max_tokens, disconnect_after }
        })
        .collect()
}

/// Runs one planned request; returns whether it was abandoned, or what was wrong.
fn run(server_addr: std::net::SocketAddr, plan: &Plan) -> Result<bool, String> {
    let mut stream = EventStream::open(server_addr, plan.path, &plan.body);
    if stream.status != 200 {
        return Err(format!("status {} {:?}", stream.status, stream.error_body));
    }
    let (mut events, mut tokens, mut finish, mut usage) = (0usize, 0usize, None, None);
    loop {
        if plan.disconnect_after == Some(events) && finish.is_none() {
            stream.disconnect();
            return Ok(true);
        }
        let Some(chunk) = stream.next_json() else {
            break;
        };
        events += 1;
        if let Some(e) = chunk.get("error") {
            return Err(format!("error event {e}"));
        }
        if !chunk["usage"].is_null() {
            usage = Some(chunk["usage"].clone());
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let lp = &choice["logprobs"];
        tokens += lp["content"]
            .as_array()
            .or(lp["tokens"].as_array())
            .map_or(0, Vec::len);
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    let usage = usage.ok_or("no usage chunk")?;
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0) as usize;
    let check = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{what}: usage {usage}, {tokens} tokens streamed, finish {finish:?}"
            ))
        }
    };
    check(completion == tokens, "completion_tokens != tokens streamed")?;
    check(
        usage["prompt_tokens"] == plan.prompt_tokens,
        "prompt_tokens",
    )?;
    check(
        usage["total_tokens"] == plan.prompt_tokens + completion,
        "total_tokens",
    )?;
    match finish.as_deref() {
        Some("length") => check(completion == plan.max_tokens, "length before max_tokens")?,
        Some("stop") => check(completion < plan.max_tokens, "stop at max_tokens")?,
        _ => return Err(format!("finish_reason {finish:?}")),
    }
    Ok(false)
}

/// Runs `plans[range]` from `CLIENTS` threads; returns the number abandoned.
fn wave(
    addr: std::net::SocketAddr,
    plans: &Arc<Vec<Plan>>,
    range: std::ops::Range<usize>,
    started: Instant,
) -> usize {
    let next = Arc::new(AtomicUsize::new(range.start));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let abandoned = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (plans, next, failures, abandoned) = (
                Arc::clone(plans),
                Arc::clone(&next),
                Arc::clone(&failures),
                Arc::clone(&abandoned),
            );
            let end = range.end;
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end || started.elapsed() > BUDGET {
                    return;
                }
                match run(addr, &plans[i]) {
                    Ok(true) => {
                        abandoned.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => failures.lock().unwrap().push(format!("request {i}: {e}")),
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} request(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        started.elapsed() <= BUDGET,
        "the load test ran out of its {BUDGET:?} budget"
    );
    abandoned.load(Ordering::Relaxed)
}

#[test]
fn five_hundred_streams_from_64_clients_complete_and_leave_no_blocks_or_memory_behind() {
    let tokenizer = TextTokenizer::from_dir(common::default_model()).unwrap();
    let plans = Arc::new(plans(&tokenizer));
    let planned_abandons = plans
        .iter()
        .filter(|p| p.disconnect_after.is_some())
        .count();
    let server = Server::start(&[]);
    let started = Instant::now();
    let mut abandoned = wave(server.addr, &plans, 0..WARM_UP, started);
    server.wait_metric("tessera_kv_blocks_used", 0.0, Duration::from_secs(30));
    let warm_rss = server.rss_kib();
    abandoned += wave(server.addr, &plans, WARM_UP..REQUESTS, started);
    let took = started.elapsed();
    server.wait_metric("tessera_kv_blocks_used", 0.0, Duration::from_secs(30));
    server.wait_metric("tessera_requests_running", 0.0, Duration::from_secs(5));
    server.wait_metric("tessera_requests_waiting", 0.0, Duration::from_secs(5));
    let end_rss = server.rss_kib();
    let generated = server.metric("tessera_generated_tokens_total");
    println!(
        "{REQUESTS} requests ({abandoned} abandoned of {planned_abandons} planned) in {took:.1?}: \
         {generated} tokens; RSS after warm-up {warm_rss} KiB, at the end {end_rss} KiB"
    );
    assert!(abandoned > 0 && abandoned <= planned_abandons);
    let drift = (end_rss as f64 - warm_rss as f64).abs() / warm_rss as f64;
    assert!(
        drift <= 0.10,
        "RSS moved {:.1}% ({warm_rss} -> {end_rss} KiB)",
        drift * 100.0
    );
}
