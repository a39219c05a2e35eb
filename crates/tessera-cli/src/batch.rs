//! `tessera batch`: an offline job over a JSONL file (OpenAI Batch API lines or documents
//! to summarize), resumable with the same output file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use tessera_batch::{BatchConfig, OverflowPolicy, DEFAULT_TEMPLATE};

use crate::{start_serving, EngineArgs, ModelArgs, ServingModel, ShardArgs};

/// Arguments of `tessera batch`.
#[derive(Args)]
pub(crate) struct BatchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    shard: ShardArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Input JSONL: OpenAI Batch API lines and/or documents `{"id", "text"}`.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL; appended to, and ids already in it are skipped (resume).
    #[arg(long)]
    output: PathBuf,
    /// Failed lines, with line numbers (default: OUTPUT with `.errors.jsonl`).
    #[arg(long)]
    errors: Option<PathBuf>,
    /// What to do with documents: summarize.
    #[arg(long)]
    task: Option<String>,
    /// A file with the instruction for each document; `{text}` marks where it goes.
    #[arg(long)]
    prompt_template: Option<PathBuf>,
    /// Documents longer than the context: truncate, map-reduce or error.
    #[arg(long, default_value = "map-reduce")]
    on_overflow: String,
    /// Plan for at most this context (tokens) instead of the model's.
    #[arg(long)]
    max_context: Option<usize>,
    /// Summary length in tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Lines in flight at once (the engine batches them).
    #[arg(long, default_value_t = 64)]
    max_concurrency: usize,
    /// Write output in input order (default: completion order).
    #[arg(long)]
    ordered: bool,
    /// fsync the output every N lines (and every --fsync-secs, and at exit).
    #[arg(long, default_value_t = 64)]
    fsync_every: usize,
    /// fsync the output at least this often, in seconds.
    #[arg(long, default_value_t = 2.0)]
    fsync_secs: f64,
}

pub(crate) fn run(a: &BatchArgs) -> Result<()> {
    let crate::EngineSetup {
        loader,
        options,
        config: engine_config,
        ..
    } = a.engine.resolve(&a.shard)?;
    let (overflow, summarize, template) = job_settings(a)?;
    // Refuse a bad input (duplicate ids) before loading anything.
    tessera_batch::check_input(&a.input, summarize)?;

    let ServingModel {
        name: model_name,
        tokenizer,
        engine,
        max_model_len,
        ..
    } = start_serving(
        &a.model,
        &a.shard,
        &options,
        &engine_config,
        loader.as_ref(),
    )?;
    let max_context = a
        .max_context
        .map_or(max_model_len, |n| max_model_len.min(n));
    let errors = a
        .errors
        .clone()
        .unwrap_or_else(|| default_errors(&a.output));
    let job = BatchConfig {
        input: a.input.clone(),
        output: a.output.clone(),
        errors,
        max_concurrency: a.max_concurrency,
        ordered: a.ordered,
        summarize,
        template,
        max_tokens: a.max_tokens,
        overflow,
        max_context,
        model_name,
        sync_lines: a.fsync_every,
        sync_interval: Duration::from_secs_f64(a.fsync_secs),
        progress_bar: std::io::stderr().is_terminal(),
    };
    tracing::info!(
        max_context,
        max_concurrency = a.max_concurrency,
        "batch starting"
    );
    let result = tessera_batch::run(engine.clone(), tokenizer, &job);
    engine.shutdown();
    let summary = result?;
    tracing::info!(
        done = summary.done,
        skipped = summary.skipped,
        failed = summary.failed,
        not_started = summary.not_started,
        interrupted = summary.interrupted,
        "batch finished"
    );
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The job's settings from the flags, checked before anything is loaded: overflow policy,
/// whether documents are summarized, and the prompt template.
fn job_settings(a: &BatchArgs) -> Result<(OverflowPolicy, bool, String)> {
    let Some(overflow) = OverflowPolicy::parse(&a.on_overflow) else {
        bail!(
            "unknown --on-overflow '{}' (truncate, map-reduce or error)",
            a.on_overflow
        );
    };
    let summarize = match a.task.as_deref() {
        None => false,
        Some("summarize") => true,
        Some(other) => bail!("unknown --task '{other}' (summarize)"),
    };
    if a.shard.tp == Some(0) || a.max_concurrency == 0 || a.engine.kv_cache_mib == 0 {
        bail!("--tp, --max-concurrency and --kv-cache-mib must be at least 1");
    }
    if !a.fsync_secs.is_finite() || a.fsync_secs < 0.0 {
        bail!("--fsync-secs must be a non-negative number");
    }
    let template = match &a.prompt_template {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the prompt template {}", path.display()))?,
        None => DEFAULT_TEMPLATE.to_string(),
    };
    if !template.contains("{text}") {
        bail!("the prompt template must contain {{text}} where the document goes");
    }
    Ok((overflow, summarize, template))
}

/// `out.jsonl` -> `out.errors.jsonl`; other names get `.errors.jsonl` appended.
fn default_errors(output: &std::path::Path) -> PathBuf {
    match output.extension() {
        Some(ext) if ext == "jsonl" => output.with_extension("errors.jsonl"),
        _ => {
            let mut name = output.as_os_str().to_owned();
            name.push(".errors.jsonl");
            PathBuf::from(name)
        }
    }
}
