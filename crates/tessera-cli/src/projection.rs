//! `tessera bench project`: a paper projection from the cost model alone (a built-in model
//! shape, no weights): every strategy at every rank count, decode and prefill, as Markdown.

use std::fmt::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_plan::cost::{predict, Phase, Prediction, Workload};
use tessera_plan::{HardwareProfile, Strategy};

use crate::manifest::{PlanRecord, RunManifest};

/// Arguments of `tessera bench project`.
#[derive(Args)]
pub(crate) struct ProjectionArgs {
    /// Built-in model shape: smollm2-135m or llama3-8b.
    #[arg(long, default_value = "llama3-8b")]
    shape: String,
    /// Hardware profile: cpu-here, h200-nvlink, h100-pcie or a FILE.toml.
    #[arg(long, default_value = "h200-nvlink")]
    hardware: String,
    /// Rank counts, comma-separated.
    #[arg(long, default_value = "1,2,3,4,5,6,7,8", value_delimiter = ',')]
    tp: Vec<usize>,
    /// Strategies, comma-separated.
    #[arg(
        long,
        default_value = "megatron,megatron-sp,attn-tp-mlp-replicated,mlp-tp-attn-replicated,replicated",
        value_delimiter = ','
    )]
    strategy: Vec<String>,
    /// Sequences per decode step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Cached tokens per sequence in decode; prompt length of the single-sequence prefill.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Bytes per weight (2 = bf16).
    #[arg(long, default_value_t = 2)]
    bytes_per_param: usize,
    /// Bytes per activation and key/value cache element (2 = bf16).
    #[arg(long, default_value_t = 2)]
    activation_bytes: usize,
    #[command(flatten)]
    reduce: crate::ReduceArgs,
    /// Write `projection.md` and `manifest.json` into this directory instead of printing.
    #[arg(long)]
    out: Option<PathBuf>,
}

struct Row {
    strategy: String,
    tp: usize,
    weights_gb: f64,
    decode: Prediction,
    prefill: Prediction,
}

fn phase_table(s: &mut String, rows: &[Row], pick: fn(&Row) -> &Prediction) {
    let _ = writeln!(
        s,
        "| strategy | tp | weights GB/rank | step ms | tok/s | speedup | efficiency | comm share | roofline bound | comm bytes/step (max rank) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for row in rows {
        let p = pick(row);
        let base = rows
            .iter()
            .find(|r| r.strategy == row.strategy && r.tp == 1)
            .map(|r| pick(r).tokens_per_s);
        let (sp, eff) = base.map_or(("-".into(), "-".into()), |b| {
            let sp = p.tokens_per_s / b;
            (format!("{sp:.2}"), format!("{:.2}", sp / row.tp as f64))
        });
        let bound = p.slowest_rank().map_or("-", |r| {
            if r.total.compute_s > r.total.memory_s {
                "compute"
            } else {
                "memory"
            }
        });
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.3} | {:.0} | {} | {} | {:.0}% | {} | {} |",
            row.strategy,
            row.tp,
            row.weights_gb,
            p.step_s * 1e3,
            p.tokens_per_s,
            sp,
            eff,
            p.comm_share() * 100.0,
            bound,
            p.comm_bytes_per_rank.iter().max().copied().unwrap_or(0)
        );
    }
}

pub(crate) fn run(a: &ProjectionArgs) -> Result<()> {
    if a.tp.is_empty() || a.tp.contains(&0) {
        bail!("--tp needs rank counts of at least 1, e.g. --tp 1,2,4,8");
    }
    let hw = HardwareProfile::resolve(&a.hardware)?;
    let mut manifest = RunManifest::new("project", None, 0, hw.clone())?;
    let rows = project_rows(a, &hw, &mut manifest)?;
    let s = render(a, &hw, &rows);
    manifest.parameters = serde_json::json!({
        "shape": a.shape, "tp": a.tp, "strategies": a.strategy, "batch": a.batch,
        "context": a.context, "bytes_per_param": a.bytes_per_param,
        "activation_bytes": a.activation_bytes,
    });
    manifest.reduce = serde_json::json!({ "assumed": a.reduce.mode() });
    match &a.out {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join("projection.md");
            std::fs::write(&path, &s).with_context(|| format!("writing {}", path.display()))?;
            manifest.write(dir)?;
            println!("{}", path.display());
        }
        None => print!("{s}"),
    }
    Ok(())
}

/// One predicted row per strategy and rank count; each plan is recorded in `manifest`.
fn project_rows(
    a: &ProjectionArgs,
    hw: &HardwareProfile,
    manifest: &mut RunManifest,
) -> Result<Vec<Row>> {
    let shape = crate::plan::builtin_shape(&a.shape)?;
    let reduce = a.reduce.mode();
    let decode_w = Workload {
        activation_bytes: a.activation_bytes,
        ..Workload::new(Phase::Decode, a.batch, a.context, a.bytes_per_param)
    };
    let prefill_w = Workload {
        phase: Phase::Prefill,
        batch: 1,
        ..decode_w
    };
    let mut rows = Vec::new();
    for name in &a.strategy {
        let strategy = Strategy::parse(name)?;
        for &tp in &a.tp {
            let plan = strategy.plan(&shape, tp)?;
            let weights = (0..tp).map(|r| plan.rank_parameters(r)).max().unwrap_or(0);
            manifest.runs.push(PlanRecord::of(&plan)?);
            rows.push(Row {
                strategy: plan.strategy.clone(),
                tp,
                weights_gb: (weights * a.bytes_per_param) as f64 / 1e9,
                decode: predict(&plan, hw, &decode_w, reduce)?,
                prefill: predict(&plan, hw, &prefill_w, reduce)?,
            });
        }
    }
    Ok(rows)
}

/// The Markdown report: assumptions, then one table per phase.
fn render(a: &ProjectionArgs, hw: &HardwareProfile, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Projection: {} on 1-{} x {} (cost model, no measurement)\n",
        a.shape,
        a.tp.iter().max().copied().unwrap_or(1),
        hw.name
    );
    let _ = writeln!(
        s,
        "Hardware profile `{}`: {:.0} TFLOP/s, {:.1} TB/s memory, {:.0} GB/s link, {:.0} µs per collective per rank ({}). \
         Weights {} bytes per parameter, activations and key/value cache {} bytes per element, collectives f32 (as this engine's communicator); {} reduction. \
         Time per layer type = max(compute, memory) + collectives; a step takes as long as its slowest rank. \
         Weights/rank is the largest rank's share. Made by `tessera bench project` (command line in `manifest.json`).\n",
        hw.name,
        hw.flops_per_s / 1e12,
        hw.memory_bytes_per_s / 1e12,
        hw.link_bytes_per_s / 1e9,
        hw.collective_latency_s * 1e6,
        hw.source,
        a.bytes_per_param,
        a.activation_bytes,
        a.reduce.mode().name()
    );
    let _ = writeln!(
        s,
        "## Decode: {} sequences, {} cached tokens each (one token per sequence per step)\n",
        a.batch, a.context
    );
    phase_table(&mut s, rows, |r| &r.decode);
    let _ = writeln!(s, "\n## Prefill: one prompt of {} tokens\n", a.context);
    phase_table(&mut s, rows, |r| &r.prefill);
    s
}
