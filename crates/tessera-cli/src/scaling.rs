//! `tessera bench scaling`: one fixed workload for every (strategy, rank count), measured
//! through the coordinator and predicted by the cost model, written as a scaling report.
//!
//! The workload: a prefill of `batch` sequences of `prompt_tokens` each in one step, then
//! `decode_steps` steps of one token per sequence; repeated, medians reported. Every step's
//! collective bytes and time come from each rank's communicator counters (deltas around the
//! step); a rank's compute time is the step's wall time minus its time in collectives.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tessera_comm::CommStats;
use tessera_engine::{Coordinator, EngineOptions, StepSeq};
use tessera_model::{LogitRows, ModelConfig};
use tessera_plan::cost::{predict, Phase, Prediction, ReduceMode, Workload};
use tessera_plan::{HardwareProfile, ShardPlan, Strategy};

use crate::bench::median;
use crate::manifest::{PlanRecord, RunManifest};
use crate::ModelArgs;

/// Arguments of `tessera bench scaling`.
#[derive(Args)]
pub(crate) struct ScalingArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Rank counts, comma-separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    tp: Vec<usize>,
    /// Strategies, comma-separated.
    #[arg(long, default_value = "megatron", value_delimiter = ',')]
    strategy: Vec<String>,
    #[command(flatten)]
    reduce: crate::ReduceArgs,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Prompt tokens per sequence (the prefill measurement).
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Decode steps after the prefill.
    #[arg(long, default_value_t = 16)]
    decode_steps: usize,
    /// Repeats of prefill + decode; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Hardware profile for predictions: cpu-here, h200-nvlink, h100-pcie or a FILE.toml.
    #[arg(long, default_value = "cpu-here")]
    hardware: String,
    /// Total CPU threads for all ranks (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the pseudo-random prompts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (default: benches/results/scaling-<date>).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Medians of one phase of one combination, measured and predicted.
#[derive(Serialize, Clone)]
pub(crate) struct PhaseResult {
    /// Token rows per step.
    pub(crate) tokens_per_step: usize,
    /// Median wall time of a step, seconds.
    pub(crate) measured_step_s: f64,
    /// Tokens per second at the median step time.
    pub(crate) tokens_per_s: f64,
    /// Median over steps of each rank's time inside collectives, seconds.
    pub(crate) comm_s_per_rank: Vec<f64>,
    /// Median over steps of each rank's time outside collectives, seconds.
    pub(crate) compute_s_per_rank: Vec<f64>,
    /// Mean over ranks of the share of the step spent in collectives.
    pub(crate) comm_share: f64,
    /// Collective calls per step on rank 0.
    pub(crate) calls_per_step: u64,
    /// Bytes each rank published in one step (the communicator's `bytes_moved`).
    pub(crate) measured_bytes_per_rank: Vec<u64>,
    /// True when every measured step published the same bytes as the first.
    pub(crate) bytes_constant: bool,
    /// Predicted step time, seconds.
    pub(crate) predicted_step_s: f64,
    /// (predicted - measured) / measured.
    pub(crate) time_error: f64,
    /// Predicted bytes each rank publishes per step.
    pub(crate) predicted_bytes_per_rank: Vec<u64>,
    /// Predicted share of the step in collectives.
    pub(crate) predicted_comm_share: f64,
}

/// One (strategy, rank count) combination.
#[derive(Serialize, Clone)]
pub(crate) struct RunResult {
    /// Strategy name.
    pub(crate) strategy: String,
    /// Rank count.
    pub(crate) tp: usize,
    /// More ranks than cores: threads time-share cores.
    pub(crate) oversubscribed: bool,
    /// Prefill of `batch` x `prompt_tokens`.
    pub(crate) prefill: PhaseResult,
    /// One decode step of `batch` tokens.
    pub(crate) decode: PhaseResult,
}

/// The whole report, as written to `scaling.json`.
#[derive(Serialize)]
pub(crate) struct ScalingReport {
    /// Model directory.
    pub(crate) model: String,
    /// Cores of this machine.
    pub(crate) cores: usize,
    /// Hardware profile of the predictions.
    pub(crate) hardware: String,
    /// Reduction the engine ran and the predictions assume.
    pub(crate) reduce: ReduceMode,
    /// Sequences per step.
    pub(crate) batch: usize,
    /// Prompt tokens per sequence.
    pub(crate) prompt_tokens: usize,
    /// Decode steps per repeat.
    pub(crate) decode_steps: usize,
    /// Repeats.
    pub(crate) repeats: usize,
    /// `/proc/loadavg` (1, 5, 15 minutes) before and after the runs: other work on a
    /// shared machine moves the numbers.
    pub(crate) load_average: Vec<String>,
    /// Every combination, in run order.
    pub(crate) runs: Vec<RunResult>,
}

/// One step's measurements.
struct StepSample {
    wall_s: f64,
    comm: Vec<CommStats>,
}

fn delta(after: &[CommStats], before: &[CommStats]) -> Vec<CommStats> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| CommStats {
            calls: a.calls - b.calls,
            bytes_moved: a.bytes_moved - b.bytes_moved,
            time: a.time.saturating_sub(b.time),
        })
        .collect()
}

fn timed_step(engine: &mut Coordinator, seqs: Vec<StepSeq>) -> Result<(Vec<f32>, StepSample)> {
    let before = engine.comm_stats().to_vec();
    let t = Instant::now();
    let logits = engine.step(seqs)?;
    let wall_s = t.elapsed().as_secs_f64();
    let comm = delta(engine.comm_stats(), &before);
    Ok((logits, StepSample { wall_s, comm }))
}

fn summarize(samples: &[StepSample], tokens: usize, p: &Predicted) -> PhaseResult {
    let world = samples.first().map_or(0, |s| s.comm.len());
    let per_rank = |f: &dyn Fn(&StepSample, usize) -> f64| -> Vec<f64> {
        (0..world)
            .map(|r| median(&samples.iter().map(|s| f(s, r)).collect::<Vec<_>>()))
            .collect()
    };
    let comm_s = per_rank(&|s, r| s.comm[r].time.as_secs_f64());
    let compute_s = per_rank(&|s, r| (s.wall_s - s.comm[r].time.as_secs_f64()).max(0.0));
    let shares: Vec<f64> = samples
        .iter()
        .map(|s| {
            s.comm.iter().map(|c| c.time.as_secs_f64()).sum::<f64>() / (world as f64 * s.wall_s)
        })
        .collect();
    let step_s = median(&samples.iter().map(|s| s.wall_s).collect::<Vec<_>>());
    let bytes: Vec<u64> = samples
        .first()
        .map(|s| s.comm.iter().map(|c| c.bytes_moved).collect())
        .unwrap_or_default();
    let bytes_constant = samples.iter().all(|s| {
        s.comm
            .iter()
            .map(|c| c.bytes_moved)
            .eq(bytes.iter().copied())
    });
    PhaseResult {
        tokens_per_step: tokens,
        measured_step_s: step_s,
        tokens_per_s: tokens as f64 / step_s,
        comm_s_per_rank: comm_s,
        compute_s_per_rank: compute_s,
        comm_share: median(&shares),
        calls_per_step: samples
            .first()
            .and_then(|s| s.comm.first())
            .map_or(0, |c| c.calls),
        measured_bytes_per_rank: bytes,
        bytes_constant,
        predicted_step_s: p.step_s,
        time_error: (p.step_s - step_s) / step_s,
        predicted_bytes_per_rank: p.bytes_per_rank.clone(),
        predicted_comm_share: p.comm_share,
    }
}

/// What the cost model predicts for one step of a phase.
struct Predicted {
    step_s: f64,
    bytes_per_rank: Vec<u64>,
    comm_share: f64,
}

impl Predicted {
    fn of(p: &Prediction) -> Self {
        Self {
            step_s: p.step_s,
            bytes_per_rank: p.comm_bytes_per_rank.clone(),
            comm_share: p.comm_share(),
        }
    }
}

/// The mean prediction over the decode steps (the cached context grows by one per step;
/// collective bytes do not depend on it).
fn predict_decode(
    plan: &ShardPlan,
    hw: &HardwareProfile,
    a: &ScalingArgs,
    reduce: ReduceMode,
) -> Result<Predicted> {
    let steps = (0..a.decode_steps)
        .map(|i| {
            let w = Workload::new(Phase::Decode, a.batch, a.prompt_tokens + i, 4);
            predict(plan, hw, &w, reduce).map(|p| Predicted::of(&p))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = steps.len().max(1) as f64;
    Ok(Predicted {
        step_s: steps.iter().map(|p| p.step_s).sum::<f64>() / n,
        comm_share: steps.iter().map(|p| p.comm_share).sum::<f64>() / n,
        bytes_per_rank: steps
            .first()
            .map(|p| p.bytes_per_rank.clone())
            .unwrap_or_default(),
    })
}

fn prompts(a: &ScalingArgs, vocab: usize) -> Vec<Vec<u32>> {
    crate::bench::pseudo_prompts(a.batch, a.prompt_tokens, a.seed, vocab)
}

fn run_one(
    dir: &std::path::Path,
    plan: ShardPlan,
    a: &ScalingArgs,
    hw: &HardwareProfile,
    reduce: ReduceMode,
    cores: usize,
) -> Result<RunResult> {
    let (strategy, tp) = (plan.strategy.clone(), plan.world_size);
    let options = EngineOptions {
        threads: a.threads,
        reduce,
        ..EngineOptions::default()
    };
    let mut engine =
        Coordinator::start(dir, plan.clone(), &options).context("starting the engine")?;
    let vocab = engine.config().shape.vocab;
    let block = engine.block_size();
    let per_seq = (a.prompt_tokens + a.decode_steps).div_ceil(block);
    if per_seq * a.batch > engine.num_blocks() {
        bail!(
            "{} sequences of {} tokens need {} KV blocks but the cache holds {}",
            a.batch,
            a.prompt_tokens + a.decode_steps,
            per_seq * a.batch,
            engine.num_blocks()
        );
    }
    let tables: Vec<Vec<u32>> = (0..a.batch)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let prompts = prompts(a, vocab);
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for _ in 0..a.repeats {
        let seqs = prompts
            .iter()
            .zip(&tables)
            .enumerate()
            .map(|(id, (p, t))| StepSeq {
                id: id as u64,
                tokens: p.clone(),
                start: 0,
                block_table: t.clone(),
                logits: LogitRows::Last,
            })
            .collect();
        let (mut logits, sample) = timed_step(&mut engine, seqs)?;
        prefill.push(sample);
        for i in 0..a.decode_steps {
            let seqs = logits
                .chunks_exact(vocab)
                .zip(&tables)
                .enumerate()
                .map(|(id, (row, t))| StepSeq {
                    id: id as u64,
                    tokens: vec![tessera_kernels::argmax(row).unwrap_or(0) as u32],
                    start: a.prompt_tokens + i,
                    block_table: t.clone(),
                    logits: LogitRows::Last,
                })
                .collect();
            let (next, sample) = timed_step(&mut engine, seqs)?;
            logits = next;
            decode.push(sample);
        }
    }
    let pre_w = Workload::new(Phase::Prefill, a.batch, a.prompt_tokens, 4);
    let pre_p = Predicted::of(&predict(&plan, hw, &pre_w, reduce)?);
    let dec_p = predict_decode(&plan, hw, a, reduce)?;
    let result = RunResult {
        strategy,
        tp,
        oversubscribed: tp > cores,
        prefill: summarize(&prefill, a.batch * a.prompt_tokens, &pre_p),
        decode: summarize(&decode, a.batch, &dec_p),
    };
    tracing::info!(
        strategy = %result.strategy,
        tp,
        decode_tok_s = format!("{:.1}", result.decode.tokens_per_s),
        prefill_tok_s = format!("{:.1}", result.prefill.tokens_per_s),
        "measured"
    );
    Ok(result)
}

pub(crate) fn run(a: &ScalingArgs) -> Result<()> {
    if a.batch == 0 || a.prompt_tokens == 0 || a.decode_steps == 0 || a.repeats == 0 {
        bail!("--batch, --prompt-tokens, --decode-steps and --repeats must be at least 1");
    }
    if a.tp.is_empty() || a.tp.contains(&0) {
        bail!("--tp needs rank counts of at least 1, e.g. --tp 1,2,4");
    }
    let strategies = a
        .strategy
        .iter()
        .map(|s| Strategy::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let hw = HardwareProfile::resolve(&a.hardware)?;
    let dir = a.model.resolve()?;
    let config = ModelConfig::from_dir(&dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reduce = a.reduce.mode();
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "benches/results/scaling-{}",
            crate::manifest::utc_date()
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut manifest = RunManifest::new("scaling", Some(&dir), a.seed, hw.clone())?;
    let mut runs = Vec::new();
    for strategy in &strategies {
        for &tp in &a.tp {
            let plan = strategy.plan(&config.shape, tp)?;
            manifest.runs.push(PlanRecord::of(&plan)?);
            runs.push(run_one(&dir, plan, a, &hw, reduce, cores)?);
        }
    }
    manifest.reduce = serde_json::json!(reduce);
    manifest.parameters = serde_json::json!({
        "tp": a.tp, "strategies": a.strategy, "batch": a.batch, "prompt_tokens": a.prompt_tokens,
        "decode_steps": a.decode_steps, "repeats": a.repeats, "threads": a.threads, "cores": cores,
        "weight_dtype": "f32",
    });
    // Written first: it records the load average at the end of the runs for the report.
    manifest.write(&out)?;
    let report = ScalingReport {
        model: manifest.model_dir.clone().unwrap_or_default(),
        cores,
        hardware: hw.name.clone(),
        reduce,
        batch: a.batch,
        prompt_tokens: a.prompt_tokens,
        decode_steps: a.decode_steps,
        repeats: a.repeats,
        load_average: manifest.load_average.clone(),
        runs,
    };
    std::fs::write(
        out.join("scaling.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    std::fs::write(
        out.join("scaling.md"),
        crate::scaling_report::markdown(&report),
    )?;
    crate::scaling_report::plot(&report, &out.join("scaling.svg"))?;
    println!("{}", out.display());
    Ok(())
}
