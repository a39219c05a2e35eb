//! `tessera bench throughput`: many requests through the serving engine at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tessera_engine::sampling::SamplingParams;
use tessera_engine::{Coordinator, EngineHandle, Event, Request};
use tessera_model::ModelConfig;

use tessera_plan::HardwareProfile;

use crate::manifest::{write_single_run, RunManifest};
use crate::{EngineArgs, ModelArgs, ShardArgs};

/// Arguments of `tessera bench throughput`.
#[derive(Args)]
pub(crate) struct ThroughputArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Requests in all.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    /// Prompt tokens per request (distinct random prompts: the prefix cache cannot help).
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// Generated tokens per request (end-of-sequence ignored).
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    /// Requests in flight at once (default: all).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seed of the random prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON only (no table).
    #[arg(long)]
    json: bool,
    /// Also write `throughput.json` and `manifest.json` into this directory.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Percentiles {
    median: f64,
    p90: f64,
    p99: f64,
}

#[derive(Serialize)]
struct Report {
    tp: usize,
    strategy: String,
    requests: usize,
    input_len: usize,
    output_len: usize,
    concurrency: usize,
    wall_s: f64,
    output_tok_s: f64,
    total_tok_s: f64,
    ttft_ms: Percentiles,
    itl_ms: Percentiles,
    prefix_hits: u64,
    preemptions: u64,
    /// The KV cache's storage, as asked for (`None`: the backend's default).
    kv_dtype: Option<String>,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() - 1) as f64 * q).round() as usize]
        }
    };
    Percentiles {
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

/// One benchmark client: takes the next prompt until none is left, and returns its
/// time-to-first-token and inter-token samples (ms) and the tokens it received.
fn client(
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    next: &AtomicUsize,
    output_len: usize,
) -> Result<(Vec<f64>, Vec<f64>, usize)> {
    let (mut ttft, mut itl, mut tokens) = (Vec::new(), Vec::new(), 0usize);
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= prompts.len() {
            return Ok((ttft, itl, tokens));
        }
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: output_len,
            ignore_eos: true,
            ..SamplingParams::default()
        };
        let sent = Instant::now();
        let mut sub = engine.submit_blocking(Request {
            prompt: prompts[i].clone(),
            params,
        })?;
        let mut last: Option<Instant> = None;
        while let Some(e) = sub.events.blocking_recv() {
            match e {
                Event::Token { .. } => {
                    let now = Instant::now();
                    match last {
                        None => ttft.push(now.duration_since(sent).as_secs_f64() * 1e3),
                        Some(t) => itl.push(now.duration_since(t).as_secs_f64() * 1e3),
                    }
                    last = Some(now);
                    tokens += 1;
                }
                Event::Finished { .. } => break,
                Event::PromptLogprobs(_) => {}
            }
        }
    }
}

/// The human-readable summary of a run, on stderr.
fn print_summary(r: &Report) {
    eprintln!(
        "tp {}: {} requests x ({} in, {} out), concurrency {}: {:.1} s, {:.1} output tok/s, {:.1} total tok/s\n  TTFT ms median {:.0} p90 {:.0} p99 {:.0}; ITL ms median {:.1} p90 {:.1} p99 {:.1}",
        r.tp, r.requests, r.input_len, r.output_len, r.concurrency, r.wall_s, r.output_tok_s, r.total_tok_s,
        r.ttft_ms.median, r.ttft_ms.p90, r.ttft_ms.p99,
        r.itl_ms.median, r.itl_ms.p90, r.itl_ms.p99
    );
}

pub(crate) fn run(a: &ThroughputArgs) -> Result<()> {
    let crate::EngineSetup {
        loader,
        options,
        config: engine_config,
        itl,
        ..
    } = a.engine.resolve(&a.shard)?;
    if a.requests == 0 || a.input_len == 0 || a.output_len == 0 || a.engine.kv_cache_mib == 0 {
        bail!("--requests, --input-len, --output-len and --kv-cache-mib must be at least 1");
    }
    let dir = a.model.resolve()?;
    let config = ModelConfig::from_dir(&dir)?;
    let plan = a.shard.plan(&config.shape)?;
    let (tp, strategy) = (plan.world_size, plan.strategy.clone());
    let coord = Coordinator::start_on(&dir, plan.clone(), &options, loader.as_ref())
        .context("starting the engine")?;
    let engine = EngineHandle::start_paced(coord, None, &engine_config, itl)?;
    let prompts: Arc<Vec<Vec<u32>>> = Arc::new(crate::bench::pseudo_prompts(
        a.requests,
        a.input_len,
        a.seed,
        config.shape.vocab,
    ));
    let concurrency = a.concurrency.unwrap_or(a.requests).clamp(1, a.requests);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (engine, prompts, next) = (engine.clone(), Arc::clone(&prompts), Arc::clone(&next));
            let output_len = a.output_len;
            std::thread::spawn(move || client(&engine, &prompts, &next, output_len))
        })
        .collect();
    let (mut ttft, mut itl, mut tokens) = (Vec::new(), Vec::new(), 0usize);
    for c in clients {
        let (t, i, n) = c
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        ttft.extend(t);
        itl.extend(i);
        tokens += n;
    }
    let wall = start.elapsed().as_secs_f64();
    let stats = engine.stats();
    engine.shutdown();
    let report = Report {
        tp,
        strategy,
        requests: a.requests,
        input_len: a.input_len,
        output_len: a.output_len,
        concurrency,
        wall_s: wall,
        output_tok_s: tokens as f64 / wall,
        total_tok_s: (tokens + a.requests * a.input_len) as f64 / wall,
        ttft_ms: percentiles(ttft),
        itl_ms: percentiles(itl),
        prefix_hits: stats.prefix_hits,
        preemptions: stats.preemptions,
        kv_dtype: a.engine.kv_dtype.clone(),
    };
    if !a.json {
        print_summary(&report);
    }
    println!("{}", serde_json::to_string(&report)?);
    if let Some(out) = &a.out {
        save(a, out, &dir, concurrency, &report, &plan)?;
    }
    Ok(())
}

/// Writes the report, its run manifest and the plan into `out`.
fn save(
    a: &ThroughputArgs,
    out: &std::path::Path,
    dir: &std::path::Path,
    concurrency: usize,
    report: &Report,
    plan: &tessera_plan::ShardPlan,
) -> Result<()> {
    let mut manifest =
        RunManifest::new("throughput", Some(dir), a.seed, HardwareProfile::cpu_here())?;
    manifest.parameters = serde_json::json!({
        "dtype": a.engine.dtype, "requests": a.requests, "input_len": a.input_len,
        "output_len": a.output_len, "concurrency": concurrency,
        "max_batch_tokens": a.engine.max_batch_tokens, "max_seqs": a.engine.max_seqs, "threads": a.engine.threads,
        "isa": a.engine.isa, "kv_dtype": a.engine.kv_dtype,
    });
    write_single_run(out, "throughput.json", report, manifest, plan)
}
