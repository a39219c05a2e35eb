//! `tessera serve`: the OpenAI-compatible HTTP server over the serving engine.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_server::ServerConfig;

use crate::{start_serving, Device, EngineArgs, ModelArgs, ServingModel, ShardArgs};

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
    #[command(flatten)]
    nodes: NodeArgs,
}

/// Ranks spread over several processes or machines (see README, "Several nodes").
#[derive(Args)]
pub(crate) struct NodeArgs {
    /// Nodes the ranks are spread over (as evenly as they go; node 0 takes the first).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// This node: 0 runs the engine and the HTTP server, 1.. run their ranks for it.
    #[arg(long, default_value_t = 0)]
    node_rank: usize,
    /// Node 0's address, e.g. 10.0.0.1:29500: node 0 listens there, the others connect.
    #[arg(long)]
    master: Option<String>,
    /// Seconds node 0 waits for the other nodes' ranks, and they for node 0.
    #[arg(long, default_value_t = 600)]
    node_timeout: u64,
}

impl NodeArgs {
    /// The master address, resolved (required with more than one node).
    fn master(&self) -> Result<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        let Some(text) = &self.master else {
            bail!(
                "--nodes {} needs --master ADDR:PORT (node 0's address)",
                self.nodes
            );
        };
        text.to_socket_addrs()
            .with_context(|| format!("--master '{text}' is not an ADDR:PORT"))?
            .next()
            .with_context(|| format!("--master '{text}' resolves to no address"))
    }
}

/// Checks the node flags against the plan; a CPU plan across nodes must have no
/// collectives (the shared-memory communicator does not leave a process).
fn check_nodes(n: &NodeArgs, plan: &tessera_plan::ShardPlan, device: Device) -> Result<()> {
    if n.nodes == 0 || n.node_rank >= n.nodes {
        bail!(
            "--node-rank {} is not below --nodes {}",
            n.node_rank,
            n.nodes
        );
    }
    if n.nodes > plan.world_size {
        bail!(
            "--nodes {} for {} ranks: every node needs at least one rank",
            n.nodes,
            plan.world_size
        );
    }
    if device == Device::Cpu && !plan.collectives().is_empty() {
        bail!(
            "CPU ranks on several nodes cannot run collectives (the CPU communicator is shared memory); use --device cuda (NCCL) or --strategy replicated"
        );
    }
    Ok(())
}

pub(crate) fn run(a: &ServeArgs) -> Result<()> {
    let crate::EngineSetup {
        device,
        mut loader,
        options,
        config: engine_config,
        itl,
    } = a.engine.resolve(&a.shard)?;
    if a.shard.tp == Some(0) {
        bail!("--tp must be at least 1");
    }
    if a.max_queue == 0 || a.engine.kv_cache_mib == 0 {
        bail!("--max-queue and --kv-cache-mib must be at least 1");
    }
    if a.nodes.nodes > 1 || a.nodes.node_rank > 0 {
        let master = a.nodes.master()?;
        let dir = a.model.resolve()?;
        let config = tessera_model::ModelConfig::from_dir(&dir)?;
        let plan = a.shard.plan(&config.shape)?;
        check_nodes(&a.nodes, &plan, device)?;
        let timeout = Duration::from_secs(a.nodes.node_timeout);
        if a.nodes.node_rank > 0 {
            let follower = tessera_engine::node::Follower {
                master,
                nodes: a.nodes.nodes,
                node: a.nodes.node_rank,
                dir,
                config,
                plan: std::sync::Arc::new(plan),
                dtype: options.dtype,
                reduce: options.reduce,
                threads: a.engine.threads,
                timeout,
            };
            println!(
                "tessera serve: node {} of {} following {master}",
                a.nodes.node_rank, a.nodes.nodes
            );
            tessera_engine::node::follow(&follower, loader.as_ref())?;
            tracing::info!("node 0 closed the connections; exiting");
            return Ok(());
        }
        loader = Box::new(tessera_engine::node::NodeLoader {
            inner: loader,
            nodes: a.nodes.nodes,
            listen: master,
            plan: tessera_engine::node::plan_digest(&plan),
            timeout,
        });
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
        itl,
        loader.as_ref(),
    )?;
    let server = ServerConfig {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone(),
        max_queue: a.max_queue,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        system_fingerprint: format!("tessera-{}-tp{tp}-{strategy}", env!("CARGO_PKG_VERSION")),
        sampling_defaults: tessera_server::SamplingDefaults::from_model_dir(&a.model.resolve()?)?,
        ..ServerConfig::new(model_name.clone(), max_model_len)
    };
    tracing::info!(model = %model_name, tp, max_model_len, "model loaded");
    tessera_server::run(engine, tokenizer, server, |addr| {
        println!("tessera serve: listening on http://{addr} (model {model_name})");
    })?;
    tracing::info!("server stopped");
    Ok(())
}
