//! The caller's side of the engine: [`EngineHandle`] starts the engine thread, submits
//! and cancels requests, and reads the counters the thread publishes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use serde::Serialize;
use tessera_model::TextTokenizer;
use tokio::sync::{mpsc, oneshot};

use super::pace::ItlTarget;
use super::request::{Event, Request};
use super::step::Worker;
use crate::constraint::TokenConstraint;
use crate::coordinator::{Coordinator, EngineError};
use crate::histogram::Histogram;
use crate::scheduler::{Scheduler, SchedulerConfig};

/// Counters of the engine, refreshed every step (for `/metrics` and benchmarks).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EngineStats {
    /// Requests being computed.
    pub running: usize,
    /// Requests waiting for room.
    pub waiting: usize,
    /// KV blocks in use.
    pub blocks_used: usize,
    /// KV blocks in the pool.
    pub blocks_total: usize,
    /// Prefix-cache block lookups.
    pub prefix_queries: u64,
    /// Prefix-cache block hits.
    pub prefix_hits: u64,
    /// Tokens generated since start.
    pub generated_tokens: u64,
    /// Prompt tokens computed since start (prefix-cache hits excluded).
    pub computed_prompt_tokens: u64,
    /// Forward steps run.
    pub steps: u64,
    /// Requests preempted (recomputed later) since start.
    pub preemptions: u64,
    /// Per rank: seconds spent inside collectives (all-reduce, all-gather) since start.
    pub collective_seconds: Vec<f64>,
    /// Per rank: bytes written into the communicator since start.
    pub collective_bytes: Vec<u64>,
    /// Per rank: seconds spent inside collectives during the last forward step.
    pub collective_last_step_seconds: Vec<f64>,
    /// Per rank: histogram of the seconds spent inside collectives per forward step.
    pub collective_step_seconds: Vec<Histogram>,
}

/// Engine tuning knobs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most tokens in one forward step (chunked prefill budget).
    pub max_batch_tokens: usize,
    /// Most sequences in one forward step.
    pub max_seqs: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 512,
            max_seqs: 64,
        }
    }
}

/// A request on its way to the engine thread.
pub(crate) struct Submit {
    pub(crate) id: u64,
    pub(crate) request: Request,
    /// The grammar's matcher, for a constrained request.
    pub(crate) constraint: Option<TokenConstraint>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) reply: oneshot::Sender<Result<(), EngineError>>,
    /// The submitter's span, so engine-thread lines about the request carry its fields.
    pub(crate) span: tracing::Span,
}

/// A message from a handle to the engine thread.
pub(crate) enum Msg {
    /// Admit a request.
    Submit(Box<Submit>),
    /// Cancel the request with this id.
    Cancel(u64),
}

/// A handle on a running engine; cheap to clone, usable from any thread or async task.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    tx: Mutex<Sender<Msg>>,
    next_id: AtomicU64,
    stats: Arc<Mutex<EngineStats>>,
    join: Mutex<Option<JoinHandle<()>>>,
    vocab: usize,
    max_context: usize,
    default_stop: Vec<u32>,
}

/// A submitted request: its id and the stream of its events.
pub struct Submission {
    /// The engine's id of the request (for [`EngineHandle::cancel`]).
    pub id: u64,
    /// Events of the request; dropping it cancels the request.
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl EngineHandle {
    /// Starts the engine thread over `coordinator`; `tokenizer` turns tokens into text
    /// deltas. Prefill is paced for the default [`ItlTarget`] (`auto`).
    pub fn start(
        coordinator: Coordinator,
        tokenizer: Option<Arc<TextTokenizer>>,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        Self::start_paced(coordinator, tokenizer, config, ItlTarget::default())
    }

    /// Like [`EngineHandle::start`], pacing prefill for the inter-token time `itl`.
    pub fn start_paced(
        coordinator: Coordinator,
        tokenizer: Option<Arc<TextTokenizer>>,
        config: &EngineConfig,
        itl: ItlTarget,
    ) -> Result<Self, EngineError> {
        let model = coordinator.config().clone();
        let sched = Scheduler::new(SchedulerConfig {
            num_blocks: coordinator.num_blocks(),
            block_size: coordinator.block_size(),
            max_batch_tokens: config.max_batch_tokens,
            max_seqs: config.max_seqs,
            max_context: model.max_position_embeddings,
        })
        .map_err(|e| EngineError::Config(e.to_string()))?;
        let mut default_stop: Vec<u32> = tokenizer
            .as_ref()
            .map(|t| t.eos_ids().to_vec())
            .unwrap_or_default();
        for id in &model.eos_token_ids {
            if !default_stop.contains(id) {
                default_stop.push(*id);
            }
        }
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let (tx, rx) = channel();
        let mut worker = Worker::new(
            coordinator,
            sched,
            tokenizer,
            Arc::clone(&stats),
            default_stop.clone(),
            itl,
        );
        let join = std::thread::Builder::new()
            .name("tessera-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::Internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(HandleInner {
                tx: Mutex::new(tx),
                next_id: AtomicU64::new(1),
                stats,
                join: Mutex::new(Some(join)),
                vocab: model.shape.vocab,
                max_context: model.max_position_embeddings,
                default_stop,
            }),
        })
    }

    /// Vocabulary size of the served model.
    pub fn vocab(&self) -> usize {
        self.inner.vocab
    }

    /// Context length of the served model.
    pub fn max_context(&self) -> usize {
        self.inner.max_context
    }

    /// End-of-sequence ids that stop a request unless it sets `ignore_eos`.
    pub fn default_stop_ids(&self) -> &[u32] {
        &self.inner.default_stop
    }

    /// Submits a request; errors (invalid parameters, a request that can never fit) come
    /// back at once. Waits only for the engine thread to accept it, never for a step.
    pub async fn submit(&self, request: Request) -> Result<Submission, EngineError> {
        self.submit_constrained(request, None).await
    }

    /// [`EngineHandle::submit`] with the matcher its output must follow (constrained
    /// decoding; one matcher per request).
    pub async fn submit_constrained(
        &self,
        request: Request,
        constraint: Option<TokenConstraint>,
    ) -> Result<Submission, EngineError> {
        let (reply_rx, submission) = self.send(request, constraint)?;
        match reply_rx.await {
            Ok(Ok(())) => Ok(submission),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::Stopped),
        }
    }

    /// Blocking form of [`EngineHandle::submit`] for non-async callers.
    pub fn submit_blocking(&self, request: Request) -> Result<Submission, EngineError> {
        let (reply_rx, submission) = self.send(request, None)?;
        match reply_rx.blocking_recv() {
            Ok(Ok(())) => Ok(submission),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::Stopped),
        }
    }

    #[allow(clippy::type_complexity)]
    fn send(
        &self,
        request: Request,
        constraint: Option<TokenConstraint>,
    ) -> Result<(oneshot::Receiver<Result<(), EngineError>>, Submission), EngineError> {
        request
            .params
            .validate(self.inner.vocab)
            .map_err(|e| EngineError::BadRequest(e.to_string()))?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        let msg = Msg::Submit(Box::new(Submit {
            id,
            request,
            constraint,
            events: events_tx,
            reply: reply_tx,
            span: tracing::Span::current(),
        }));
        self.inner
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(msg)
            .map_err(|_| EngineError::Stopped)?;
        Ok((
            reply_rx,
            Submission {
                id,
                events: events_rx,
            },
        ))
    }

    /// Cancels a request; its blocks are freed within one step and it gets a `Cancelled` event.
    pub fn cancel(&self, id: u64) {
        let _ = self
            .inner
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Msg::Cancel(id));
    }

    /// The counters as of the last step.
    pub fn stats(&self) -> EngineStats {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the engine thread after the step in flight (pending requests get `Cancelled`).
    pub fn shutdown(&self) {
        let (tx, _) = channel();
        drop(std::mem::replace(
            &mut *self.inner.tx.lock().unwrap_or_else(PoisonError::into_inner),
            tx,
        ));
        if let Some(j) = self
            .inner
            .join
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = j.join();
        }
    }
}
