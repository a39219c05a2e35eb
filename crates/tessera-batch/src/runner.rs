//! The job loop: a bounded window of lines in flight, results appended as they finish
//! (or in input order with `ordered`), a stop signal that ends intake but lets in-flight
//! lines finish, and progress on a terminal bar or in periodic log lines.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::BatchError;
use crate::input::{Item, Task};
use crate::openai::Endpoints;
use crate::output::{ErrorLog, OutputLog};
use crate::summarize::Summarizer;

/// How a line ended: an output line, or an errors-file line.
pub(crate) enum Outcome {
    Done(Value),
    Failed(Value),
}

/// What the workers share.
pub(crate) struct Workers {
    pub(crate) endpoints: Endpoints,
    pub(crate) summarizer: Option<Summarizer>,
}

impl Workers {
    async fn process(&self, item: &Item) -> Outcome {
        let fail = |reason: String, extra: Option<Value>| {
            let mut v = json!({"line": item.line, "id": item.id, "reason": reason});
            if let (Some(extra), Value::Object(map)) = (extra, &mut v) {
                map.insert("response".into(), extra);
            }
            Outcome::Failed(v)
        };
        match &item.task {
            Task::OpenAi { url, body } => {
                let reply = self.endpoints.call(url, body.clone()).await;
                if (200..300).contains(&reply.status) {
                    Outcome::Done(json!({
                        "id": format!("batch_req_{}", reply.request_id),
                        "custom_id": item.id,
                        "response": reply.response_json(),
                        "error": null,
                    }))
                } else {
                    fail(reply.error_message(), Some(reply.response_json()))
                }
            }
            Task::Document { text } => {
                let Some(summarizer) = &self.summarizer else {
                    return fail("documents need --task summarize".into(), None);
                };
                match summarizer.summarize(text).await {
                    Ok(s) => Outcome::Done(json!({
                        "id": item.id,
                        "summary": s.text,
                        "usage": {
                            "prompt_tokens": s.prompt_tokens,
                            "completion_tokens": s.completion_tokens,
                            "total_tokens": s.prompt_tokens + s.completion_tokens,
                            "requests": s.requests,
                        },
                    })),
                    Err(reason) => fail(reason, None),
                }
            }
        }
    }
}

/// Where finished lines go, in completion or input order, with counts and progress.
pub(crate) struct Sink {
    pub(crate) output: OutputLog,
    pub(crate) errors: ErrorLog,
    pub(crate) ordered: bool,
    pending: BTreeMap<usize, Outcome>,
    next_seq: usize,
    pub(crate) done: usize,
    pub(crate) failed: usize,
    progress: Progress,
}

impl Sink {
    pub(crate) fn new(
        output: OutputLog,
        errors: ErrorLog,
        ordered: bool,
        total: usize,
        bar: bool,
    ) -> Self {
        Self {
            output,
            errors,
            ordered,
            pending: BTreeMap::new(),
            next_seq: 0,
            done: 0,
            failed: 0,
            progress: Progress::new(total, bar),
        }
    }

    /// Takes the outcome of line `seq` (its index among the lines run).
    fn accept(&mut self, seq: usize, outcome: Outcome) -> Result<(), BatchError> {
        if !self.ordered {
            return self.write(outcome);
        }
        self.pending.insert(seq, outcome);
        while let Some(outcome) = self.pending.remove(&self.next_seq) {
            self.next_seq += 1;
            self.write(outcome)?;
        }
        Ok(())
    }

    fn write(&mut self, outcome: Outcome) -> Result<(), BatchError> {
        match outcome {
            Outcome::Done(v) => {
                self.output.append(&v)?;
                self.done += 1;
            }
            Outcome::Failed(v) => {
                tracing::warn!(line = %v["line"], id = %v["id"], reason = %v["reason"], "line failed");
                self.errors.append(&v)?;
                self.failed += 1;
            }
        }
        self.progress.tick(self.done, self.failed);
        Ok(())
    }

    /// Finished lines held back waiting for an earlier one (`ordered` only).
    fn held(&self) -> usize {
        self.pending.len()
    }

    /// Writes what `ordered` still holds back (after a stop, gaps remain) and syncs.
    pub(crate) fn finish(&mut self) -> Result<(), BatchError> {
        for (_, outcome) in std::mem::take(&mut self.pending) {
            self.write(outcome)?;
        }
        self.progress.finish();
        self.output.sync()?;
        self.errors.sync()
    }

    /// Records an invalid input line.
    pub(crate) fn invalid(&mut self, v: Value) -> Result<(), BatchError> {
        self.write(Outcome::Failed(v))
    }
}

/// A bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    started: Instant,
    last_log: Instant,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn new(total: usize, bar: bool) -> Self {
        let bar = bar.then(|| {
            let b = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} lines ({per_sec}, eta {eta}) {msg}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b
        });
        Self {
            bar,
            total,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn tick(&mut self, done: usize, failed: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position((done + failed) as u64);
            if failed > 0 {
                bar.set_message(format!("{failed} failed"));
            }
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            tracing::info!(
                done,
                failed,
                total = self.total,
                lines_per_s = format!("{:.2}", (done + failed) as f64 / secs.max(1e-9)),
                "progress"
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// With `ordered`, intake pauses while this many windows of finished lines wait for a slow
/// earlier one, so memory stays bounded.
const HOLD_FACTOR: usize = 4;

/// Runs `items` with at most `window` in flight until all finish or `stop` turns true;
/// returns whether it was stopped.
pub(crate) async fn drive(
    items: Vec<Item>,
    workers: Arc<Workers>,
    sink: &mut Sink,
    window: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<bool, BatchError> {
    let items: Vec<Arc<Item>> = items.into_iter().map(Arc::new).collect();
    let mut in_flight: JoinSet<Outcome> = JoinSet::new();
    let mut seq_of = HashMap::new();
    let mut next = 0;
    let mut stopping = *stop.borrow();
    loop {
        if in_flight.is_empty() && (stopping || next == items.len()) {
            break;
        }
        tokio::select! {
            biased;
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    tracing::info!(
                        in_flight = in_flight.len(),
                        "stop requested: finishing the lines in flight, taking no new ones"
                    );
                }
            }
            Some(joined) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                if let Some((seq, outcome)) = settle(joined, &mut seq_of) {
                    sink.accept(seq, outcome)?;
                }
            }
            () = std::future::ready(()), if !stopping && next < items.len() && in_flight.len() < window && sink.held() < HOLD_FACTOR * window => {
                let item = Arc::clone(&items[next]);
                let w = Arc::clone(&workers);
                let run = Arc::clone(&item);
                let handle = in_flight.spawn(async move { w.process(&run).await });
                seq_of.insert(handle.id(), (next, item));
                next += 1;
            }
            else => break,
        }
    }
    Ok(stopping && next < items.len())
}

type Joined = Result<(tokio::task::Id, Outcome), tokio::task::JoinError>;

/// The sequence number and outcome of a finished worker; a panicked worker fails its line.
fn settle(
    joined: Joined,
    seq_of: &mut HashMap<tokio::task::Id, (usize, Arc<Item>)>,
) -> Option<(usize, Outcome)> {
    match joined {
        Ok((id, outcome)) => seq_of.remove(&id).map(|(seq, _)| (seq, outcome)),
        Err(e) => {
            let (seq, item) = seq_of.remove(&e.id())?;
            let reason = format!("worker failed: {e}");
            let v = json!({"line": item.line, "id": item.id, "reason": reason});
            Some((seq, Outcome::Failed(v)))
        }
    }
}

/// A receiver that turns true on SIGINT or SIGTERM (the task lives as long as the runtime).
pub(crate) fn stop_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tessera_server::shutdown_signal().await;
        let _ = tx.send(true);
        // Keep the sender alive so the receiver never sees a closed channel.
        std::future::pending::<()>().await;
    });
    rx
}
