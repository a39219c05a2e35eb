//! `tessera plan`: print the sharding plan as a table or as JSON, or (`--explain`) what it
//! costs per rank and layer type on a hardware profile.

use anyhow::{bail, Result};
use clap::Args;
use tessera_model::ModelConfig;
use tessera_plan::cost::{predict, render_explain, Phase, Workload};
use tessera_plan::{HardwareProfile, ModelShape};

use crate::{ModelArgs, ShardArgs};

/// Arguments of `tessera plan`.
#[derive(Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// Use a built-in model shape instead of a model directory (no weights needed):
    /// smollm2-135m or llama3-8b.
    #[arg(long, conflicts_with = "model")]
    shape: Option<String>,
    /// Print JSON on stdout and nothing else (the plan, or the prediction with --explain).
    #[arg(long)]
    json: bool,
    /// Bytes per weight for the memory column and the cost model (4 = f32, 2 = bf16).
    #[arg(long, default_value_t = 4)]
    bytes_per_param: usize,
    #[command(flatten)]
    explain: ExplainArgs,
}

/// Arguments of the cost model (`tessera plan --explain`).
#[derive(Args, Clone)]
pub(crate) struct ExplainArgs {
    /// Predict FLOPs, bytes, collective bytes and time per rank and layer type.
    #[arg(long)]
    pub(crate) explain: bool,
    /// Hardware profile: cpu-here, h200-nvlink, h100-pcie, or a FILE.toml.
    #[arg(long, default_value = "cpu-here")]
    pub(crate) hardware: String,
    /// Phase of the step: decode or prefill.
    #[arg(long, default_value = "decode")]
    pub(crate) phase: String,
    /// Sequences in the step.
    #[arg(long, default_value_t = 1)]
    pub(crate) batch: usize,
    /// Prompt length (prefill) or cached tokens per sequence (decode).
    #[arg(long, default_value_t = 512)]
    pub(crate) context: usize,
}

/// A built-in model shape by name.
pub(crate) fn builtin_shape(name: &str) -> Result<ModelShape> {
    match name {
        "smollm2-135m" => Ok(ModelShape::smollm2_135m()),
        "llama3-8b" => Ok(ModelShape::llama3_8b()),
        other => bail!("unknown --shape '{other}' (smollm2-135m or llama3-8b)"),
    }
}

pub(crate) fn run(args: &PlanArgs) -> Result<()> {
    let shape = match &args.shape {
        Some(name) => builtin_shape(name)?,
        None => ModelConfig::from_dir(&args.model.resolve()?)?.shape,
    };
    let plan = args.shard.plan(&shape)?;
    if args.explain.explain {
        let e = &args.explain;
        let hardware = HardwareProfile::resolve(&e.hardware)?;
        let workload = Workload::new(
            Phase::parse(&e.phase)?,
            e.batch,
            e.context,
            args.bytes_per_param,
        );
        let prediction = predict(&plan, &hardware, &workload, args.shard.reduce())?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&prediction)?);
        } else {
            print!("{}", render_explain(&prediction));
        }
    } else if args.json {
        println!("{}", plan.to_json());
    } else {
        print!(
            "{}",
            tessera_plan::render_table(&plan, args.bytes_per_param)
        );
    }
    Ok(())
}
