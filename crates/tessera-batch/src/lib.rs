//! Offline batch jobs over the serving engine (`tessera batch`).
//!
//! Input lines are OpenAI Batch API requests (answered by the server's own routes, called
//! in-process) or plain documents to summarize (map-reduce when too long). The output file
//! is an append-only log: each finished line is written whole and flushed, so a rerun with
//! the same output skips the ids already answered, and a torn last line from a kill is
//! cut away first (see [`output`]). Failed lines go to an errors file with their line
//! number; the job goes on. A stop signal ends intake, lets in-flight lines finish, syncs.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod chunk;
pub mod error;
pub mod input;
pub mod openai;
pub mod output;
mod runner;
pub mod summarize;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tessera_engine::EngineHandle;
use tessera_model::TextTokenizer;
use tessera_server::{AppState, ServerConfig};

pub use error::BatchError;
pub use summarize::{OverflowPolicy, DEFAULT_TEMPLATE};

use runner::{Sink, Workers};

/// How a batch job runs; built by the CLI from its flags.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Input JSONL file.
    pub input: PathBuf,
    /// Output JSONL file (appended to; ids already in it are skipped).
    pub output: PathBuf,
    /// Errors JSONL file (rewritten each run).
    pub errors: PathBuf,
    /// Most lines in flight at once.
    pub max_concurrency: usize,
    /// Write output lines in input order instead of completion order.
    pub ordered: bool,
    /// Summarize plain documents (`--task summarize`).
    pub summarize: bool,
    /// Instruction around each document; holds `{text}`.
    pub template: String,
    /// Summary length in tokens.
    pub max_tokens: usize,
    /// What to do with documents over the context.
    pub overflow: OverflowPolicy,
    /// Context to plan for (tokens): the model's and the KV cache's, capped further here.
    pub max_context: usize,
    /// The served model's name (OpenAI bodies without `model` get it).
    pub model_name: String,
    /// `fsync` the output after this many lines...
    pub sync_lines: usize,
    /// ...or this much time, whichever comes first (and always at the end).
    pub sync_interval: Duration,
    /// Draw a progress bar (a terminal) rather than log progress lines.
    pub progress_bar: bool,
}

/// Counts of a finished (or stopped) job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BatchSummary {
    /// Non-blank input lines.
    pub total: usize,
    /// Lines answered by this run.
    pub done: usize,
    /// Lines skipped because the output already answers them.
    pub skipped: usize,
    /// Lines that failed (in the errors file).
    pub failed: usize,
    /// Lines not started because a stop signal came.
    pub not_started: usize,
    /// Whether a stop signal ended the run early.
    pub interrupted: bool,
}

/// Reads and checks `input` without running anything (duplicate ids are an error).
pub fn check_input(input: &std::path::Path, summarize: bool) -> Result<(), BatchError> {
    let text = std::fs::read_to_string(input).map_err(|e| BatchError::io(input, e))?;
    input::parse_input(&text, summarize).map(|_| ())
}

/// Runs the job described by `config` on `engine`, blocking the calling thread.
pub fn run(
    engine: EngineHandle,
    tokenizer: Arc<TextTokenizer>,
    config: &BatchConfig,
) -> Result<BatchSummary, BatchError> {
    let text =
        std::fs::read_to_string(&config.input).map_err(|e| BatchError::io(&config.input, e))?;
    let input = input::parse_input(&text, config.summarize)?;
    let (output, recovered) =
        output::OutputLog::open(&config.output, config.sync_lines, config.sync_interval)?;
    let errors = output::ErrorLog::create(&config.errors)?;
    let done: HashSet<String> = recovered.done;
    let total = input.items.len() + input.invalid.len();
    let todo: Vec<_> = input
        .items
        .into_iter()
        .filter(|item| !done.contains(&item.id))
        .collect();
    let skipped = input
        .invalid
        .iter()
        .filter(|b| b.id.as_ref().is_some_and(|id| done.contains(id)))
        .count()
        + (total - input.invalid.len() - todo.len());
    tracing::info!(
        total,
        to_run = todo.len(),
        skipped,
        invalid = input.invalid.len(),
        "batch input read"
    );
    let workers = Arc::new(workers(engine.clone(), tokenizer, config, &todo)?);
    let mut sink = Sink::new(
        output,
        errors,
        config.ordered,
        todo.len() + input.invalid.len(),
        config.progress_bar,
    );
    for bad in input.invalid {
        if bad.id.as_ref().is_some_and(|id| done.contains(id)) {
            continue;
        }
        sink.invalid(json!({"line": bad.line, "id": bad.id, "reason": bad.reason}))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("tessera-batch")
        .build()
        .map_err(BatchError::Runtime)?;
    let window = config.max_concurrency.max(1);
    let driven = runtime.block_on(async {
        let stop = runner::stop_signal();
        runner::drive(todo, workers, &mut sink, window, stop).await
    });
    let finished = sink.finish();
    runtime.shutdown_timeout(Duration::from_secs(1));
    let interrupted = driven?;
    finished?;
    Ok(BatchSummary {
        total,
        done: sink.done,
        skipped,
        failed: sink.failed,
        not_started: total.saturating_sub(sink.done + skipped + sink.failed),
        interrupted,
    })
}

/// The endpoints and summarizer the lines need.
fn workers(
    engine: EngineHandle,
    tokenizer: Arc<TextTokenizer>,
    config: &BatchConfig,
    todo: &[input::Item],
) -> Result<Workers, BatchError> {
    let needs_docs = todo
        .iter()
        .any(|i| matches!(i.task, input::Task::Document { .. }));
    let summarizer = if needs_docs {
        Some(summarize::Summarizer::new(
            engine.clone(),
            Arc::clone(&tokenizer),
            config.template.clone(),
            config.max_tokens,
            config.max_context,
            config.overflow,
        )?)
    } else {
        None
    };
    let server = ServerConfig {
        max_queue: config.max_concurrency.max(1) * 64,
        ..ServerConfig::new(config.model_name.clone(), config.max_context)
    };
    let state = Arc::new(AppState::new(engine, tokenizer, server));
    Ok(Workers {
        endpoints: openai::Endpoints::new(state),
        summarizer,
    })
}
