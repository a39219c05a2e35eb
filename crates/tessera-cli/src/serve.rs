//! `tessera serve`: the OpenAI-compatible HTTP server over the serving engine.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use tessera_server::ServerConfig;

use crate::{start_serving, EngineArgs, ModelArgs, ServingModel, ShardArgs};

/// Arguments of `tessera serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    engine: EngineArgs,
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
    /// Seconds in-flight requests may run after SIGTERM or Ctrl-C.
    #[arg(long, default_value_t = 30)]
    shutdown_timeout: u64,
}

pub(crate) fn run(a: &ServeArgs) -> Result<()> {
    let loader = a.engine.loader()?;
    let (options, engine_config) = a.engine.configs(&a.shard)?;
    if a.shard.tp == Some(0) {
        bail!("--tp must be at least 1");
    }
    if a.max_queue == 0 || a.engine.kv_cache_mib == 0 {
        bail!("--max-queue and --kv-cache-mib must be at least 1");
    }
    let ServingModel {
        name: model_name,
        tokenizer,
        engine,
        max_model_len,
        tp,
        strategy,
    } = start_serving(
        &a.model,
        &a.shard,
        &options,
        &engine_config,
        loader.as_ref(),
    )?;
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
