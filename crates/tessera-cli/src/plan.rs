//! `tessera plan`: print the sharding plan as a table or as JSON.

use anyhow::Result;
use clap::Args;
use tessera_model::ModelConfig;

use crate::{ModelArgs, ShardArgs};

/// Arguments of `tessera plan`.
#[derive(Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// Print the plan as JSON on stdout and nothing else.
    #[arg(long)]
    json: bool,
    /// Bytes per weight for the memory column (4 = f32, 2 = bf16).
    #[arg(long, default_value_t = 4)]
    bytes_per_param: usize,
}

pub(crate) fn run(args: &PlanArgs) -> Result<()> {
    let dir = args.model.resolve()?;
    let config = ModelConfig::from_dir(&dir)?;
    let plan = args.shard.plan(&config.shape)?;
    if args.json {
        println!("{}", plan.to_json());
    } else {
        print!(
            "{}",
            tessera_plan::render_table(&plan, args.bytes_per_param)
        );
    }
    Ok(())
}
