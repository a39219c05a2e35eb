//! `tessera serve`: the OpenAI-compatible HTTP server over the serving engine.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use tessera_engine::{EngineConfig, EngineOptions};
use tessera_model::WeightDtype;
use tessera_server::ServerConfig;

use crate::{check_device, start_serving, ModelArgs, ServingModel, ShardArgs};

/// Arguments of `tessera serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weight precision: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* requests.
    #[arg(long)]
    api_key: Option<String>,
    /// Most requests (choices) in the engine at once; more are answered 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Most tokens per engine step.
    #[arg(long, default_value_t = 512)]
    max_batch_tokens: usize,
    /// Most sequences per engine step.
    #[arg(long, default_value_t = 64)]
    max_seqs: usize,
    /// KV-cache memory per rank, in MiB (allocated and touched once at start-up; 1 GiB
    /// holds about 22k tokens of SmolLM2-135M at f32).
    #[arg(long, default_value_t = crate::DEFAULT_KV_CACHE_MIB)]
    kv_cache_mib: usize,
    /// Total CPU threads for all ranks (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds in-flight requests may run after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
}

pub(crate) fn run(a: &ServeArgs) -> Result<()> {
    check_device(&a.device)?;
    let Some(dtype) = WeightDtype::parse(&a.dtype) else {
        bail!("unknown --dtype '{}' (f32 or bf16)", a.dtype);
    };
    if a.shard.tp == Some(0) {
        bail!("--tp must be at least 1");
    }
    if a.max_queue == 0 || a.kv_cache_mib == 0 {
        bail!("--max-queue and --kv-cache-mib must be at least 1");
    }
    let options = EngineOptions {
        dtype,
        reduce: a.shard.reduce(),
        threads: a.threads,
        kv_cache_bytes: a.kv_cache_mib << 20,
        ..EngineOptions::default()
    };
    let engine_config = EngineConfig {
        max_batch_tokens: a.max_batch_tokens,
        max_seqs: a.max_seqs,
    };
    let ServingModel {
        name: model_name,
        tokenizer,
        engine,
        max_model_len,
        tp,
        strategy,
    } = start_serving(&a.model, &a.shard, &options, &engine_config)?;
    let server = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone(),
        max_queue: a.max_queue,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        system_fingerprint: format!("tessera-{}-tp{tp}-{strategy}", env!("CARGO_PKG_VERSION")),
        ..ServerConfig::new(model_name.clone(), max_model_len)
    };
    tracing::info!(model = %model_name, tp, max_model_len, "model loaded");
    tessera_server::run(engine, tokenizer, server, |addr| {
        println!("tessera serve: listening on http://{addr} (model {model_name})");
    })?;
    tracing::info!("server stopped");
    Ok(())
}
