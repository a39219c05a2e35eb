//! The serving engine: many requests share the ranks, step by step.
//!
//! One engine thread owns the [`Coordinator`], the [`Scheduler`] and every request's
//! sampler. Each step it takes new submissions and cancellations, asks the scheduler for a
//! [`crate::scheduler::StepPlan`], runs it on the ranks, samples a token for every
//! sequence whose chunk reached its last known token, and streams [`Event`]s to the
//! callers through tokio channels (so async callers never block on a step). A request
//! whose receiver is dropped is cancelled: its blocks are freed within one step.
//!
//! A request is admitted inside the tracing span of the caller that submitted it (the
//! server's request span): the admission line maps that request to the engine's sequence
//! id, which later engine-thread lines (preemption, cancellation) carry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tessera_model::{LogitRows, TextTokenizer};
use tokio::sync::{mpsc, oneshot};

use crate::constraint::{masks_beside, TokenConstraint};
use crate::coordinator::{Coordinator, EngineError, StepSeq};
use crate::histogram::Histogram;
use crate::prompt_scores::PromptScores;
use crate::sampling::{Sampled, Sampler, SamplingParams, StopMatcher};
use crate::scheduler::{AppendOutcome, SchedRequest, Scheduler, SchedulerConfig};

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` (or the context) was reached.
    Length,
    /// The caller cancelled (or went away).
    Cancelled,
    /// The engine failed while running it.
    Error,
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// What a caller receives about its request, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Logprobs of the prompt tokens (only with `prompt_logprobs`; before any token): one
    /// entry per prompt token, `None` for the first (nothing precedes it).
    PromptLogprobs(Vec<Option<TokenLogprobs>>),
    /// One generated token.
    Token {
        /// Its id.
        id: u32,
        /// Text that became final with it (may be empty: held back for UTF-8 or a possible stop string).
        text: String,
        /// Its log-probability and the top alternatives, when asked for.
        logprobs: Option<TokenLogprobs>,
    },
    /// The request ended; nothing follows.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
        /// The error, when `reason` is `Error`.
        error: Option<String>,
    },
}

/// Log-probabilities of one generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    /// The chosen token's logprob.
    pub logprob: f32,
    /// The top alternatives `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// A request to the engine.
#[derive(Clone, Debug)]
pub struct Request {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// How to sample.
    pub params: SamplingParams,
}

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

struct Submit {
    id: u64,
    request: Request,
    constraint: Option<TokenConstraint>,
    events: mpsc::UnboundedSender<Event>,
    reply: oneshot::Sender<Result<(), EngineError>>,
    /// The submitter's span, so engine-thread lines about the request carry its fields.
    span: tracing::Span,
}

enum Msg {
    Submit(Box<Submit>),
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
    /// Starts the engine thread over `coordinator`; `tokenizer` turns tokens into text deltas.
    pub fn start(
        coordinator: Coordinator,
        tokenizer: Option<Arc<TextTokenizer>>,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let model = coordinator.config().clone();
        let sched = Scheduler::new(SchedulerConfig {
            num_blocks: coordinator.num_blocks(),
            block_size: coordinator.block_size(),
            max_batch_tokens: config.max_batch_tokens,
            max_seqs: config.max_seqs,
            max_context: model.max_position_embeddings,
        })
        .map_err(|e| EngineError::BadRequest(e.to_string()))?;
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
        let mut worker = Worker {
            coordinator,
            sched,
            tokenizer,
            requests: HashMap::new(),
            stats: Arc::clone(&stats),
            counters: EngineStats::default(),
            default_stop: default_stop.clone(),
            collective_seconds: Vec::new(),
        };
        let join = std::thread::Builder::new()
            .name("tessera-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| EngineError::BadRequest(format!("cannot start the engine thread: {e}")))?;
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
            Err(_) => Err(EngineError::RankLost(0)),
        }
    }

    /// Blocking form of [`EngineHandle::submit`] for non-async callers.
    pub fn submit_blocking(&self, request: Request) -> Result<Submission, EngineError> {
        let (reply_rx, submission) = self.send(request, None)?;
        match reply_rx.blocking_recv() {
            Ok(Ok(())) => Ok(submission),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::RankLost(0)),
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
            .map_err(|_| EngineError::RankLost(0))?;
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

/// Turns generated ids into text deltas without splitting a UTF-8 character.
struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    fn push(&mut self, tok: &TextTokenizer, id: u32) -> String {
        self.ids.push(id);
        let prefix = tok
            .decode(&self.ids[self.prefix_offset..self.read_offset], false)
            .unwrap_or_default();
        let full = tok
            .decode(&self.ids[self.prefix_offset..], false)
            .unwrap_or_default();
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            delta
        } else {
            String::new()
        }
    }
}

struct Live {
    prompt_len: usize,
    /// `Some` until the prompt logprobs (if asked for) are sent.
    prompt_scores: Option<PromptScores>,
    span: tracing::Span,
    params: SamplingParams,
    sampler: Sampler,
    events: mpsc::UnboundedSender<Event>,
    detok: Detokenizer,
    stops: StopMatcher,
    stop_ids: Vec<u32>,
    generated: usize,
    /// The grammar's matcher, for a constrained request.
    constraint: Option<TokenConstraint>,
}

struct Worker {
    coordinator: Coordinator,
    sched: Scheduler,
    tokenizer: Option<Arc<TextTokenizer>>,
    requests: HashMap<u64, Live>,
    stats: Arc<Mutex<EngineStats>>,
    counters: EngineStats,
    default_stop: Vec<u32>,
    /// Each rank's cumulative collective seconds after the previous step.
    collective_seconds: Vec<f64>,
}

impl Worker {
    fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let idle = self.sched.num_running() == 0 && self.sched.num_waiting() == 0;
            if idle {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(msg) => self.handle(msg),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        self.cancel_all();
                        return;
                    }
                }
            }
            self.drop_abandoned();
            if let Err(e) = self.step() {
                tracing::error!(error = %e, "engine step failed; failing every request");
                self.fail_all(&e.to_string());
                return;
            }
            self.publish();
        }
        self.cancel_all();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Submit(submit) => {
                let Submit {
                    id,
                    request,
                    constraint,
                    events,
                    reply,
                    span,
                } = *submit;
                let added = self.sched.add(SchedRequest {
                    id,
                    prompt: request.prompt.clone(),
                    max_tokens: request.params.max_tokens,
                    prompt_logits: request.params.prompt_logprobs.is_some(),
                });
                match added {
                    Ok(()) => {
                        span.in_scope(|| {
                            tracing::debug!(
                                seq = id,
                                prompt_tokens = request.prompt.len(),
                                "admitted as engine sequence {id}"
                            )
                        });
                        let mut stop_ids = request.params.stop_token_ids.clone();
                        if !request.params.ignore_eos {
                            stop_ids.extend(&self.default_stop);
                        }
                        let prompt_scores =
                            request.params.prompt_logprobs.map(|top| PromptScores {
                                prompt: request.prompt.clone(),
                                top,
                                scores: vec![None; request.prompt.len()],
                            });
                        self.requests.insert(
                            id,
                            Live {
                                prompt_len: request.prompt.len(),
                                prompt_scores,
                                span,
                                sampler: Sampler::new(&request.params, &request.prompt),
                                stops: StopMatcher::new(&request.params.stop),
                                params: request.params,
                                events,
                                detok: Detokenizer {
                                    ids: Vec::new(),
                                    prefix_offset: 0,
                                    read_offset: 0,
                                },
                                stop_ids,
                                generated: 0,
                                constraint,
                            },
                        );
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(EngineError::BadRequest(e.to_string())));
                    }
                }
            }
            Msg::Cancel(id) => self.end(id, FinishReason::Cancelled, None),
        }
    }

    /// Cancels requests whose caller dropped the event stream.
    fn drop_abandoned(&mut self) {
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.events.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.end(id, FinishReason::Cancelled, None);
        }
    }

    fn step(&mut self) -> Result<(), EngineError> {
        let plan = self.sched.schedule();
        self.counters.preemptions += plan.preempted.len() as u64;
        for id in &plan.preempted {
            if let Some(live) = self.requests.get(id) {
                live.span
                    .in_scope(|| tracing::debug!(seq = id, "preempted: out of KV blocks"));
            }
        }
        if plan.seqs.is_empty() {
            if self.sched.num_running() == 0 && self.sched.num_waiting() > 0 {
                // Nothing can run: only possible if the pool is exhausted by cached
                // blocks; the scheduler evicts them, so back off briefly.
                std::thread::sleep(Duration::from_millis(1));
            }
            return Ok(());
        }
        let started = Instant::now();
        let rows: Vec<LogitRows> = plan.seqs.iter().map(|s| self.rows_of(s)).collect();
        let seqs: Vec<StepSeq> = plan
            .seqs
            .iter()
            .zip(&rows)
            .map(|(s, &logits)| StepSeq {
                tokens: s.tokens.clone(),
                start: s.start_pos,
                block_table: s.block_table.iter().map(|b| b.index() as u32).collect(),
                logits,
            })
            .collect();
        for s in &plan.seqs {
            if self.requests.get(&s.id).is_some_and(|r| r.generated == 0) {
                self.counters.computed_prompt_tokens += s.tokens.len() as u64;
            }
        }
        // When every row sampled is plain greedy (no bias, penalty or logprobs) and no
        // prompt is scored, the ranks return only the chosen ids (a GPU picks them where
        // the logits are, and no logits row crosses to the host).
        let greedy_only = rows.iter().all(|&r| r != LogitRows::All)
            && plan.seqs.iter().filter(|s| s.needs_logits).all(|s| {
                self.requests
                    .get(&s.id)
                    .is_some_and(|r| r.sampler.is_plain_greedy() && r.constraint.is_none())
            });
        if greedy_only {
            let ids = self.coordinator.step_greedy(seqs)?;
            self.counters.steps += 1;
            self.observe_collectives();
            let sampled: Vec<u64> = plan
                .seqs
                .iter()
                .filter(|s| s.needs_logits)
                .map(|s| s.id)
                .collect();
            if ids.len() != sampled.len() {
                return Err(EngineError::BadRequest(format!(
                    "the ranks returned {} tokens for {} sequences",
                    ids.len(),
                    sampled.len()
                )));
            }
            for (id, token) in sampled.into_iter().zip(ids) {
                self.advance(id, Pick::Token(token));
            }
            return Ok(());
        }
        // Constrained rows' masks are computed while the ranks run the forward pass.
        let constraints = self
            .requests
            .values_mut()
            .filter_map(|r| r.constraint.as_mut())
            .collect();
        let coordinator = &mut self.coordinator;
        let logits = masks_beside(constraints, || coordinator.step(seqs))?;
        self.counters.steps += 1;
        self.observe_collectives();
        let vocab = self.coordinator.config().shape.vocab;
        let mut offset = 0;
        for (s, r) in plan.seqs.iter().zip(rows) {
            let n = r.count(s.tokens.len());
            let Some(block) = logits.get(offset * vocab..(offset + n) * vocab) else {
                return Err(EngineError::BadRequest(format!(
                    "the ranks returned {} logit rows, fewer than the step asked for",
                    logits.len() / vocab.max(1)
                )));
            };
            offset += n;
            if r == LogitRows::All {
                self.record_prompt_scores(s.id, s.start_pos, block, vocab);
            }
            if s.needs_logits {
                self.advance(s.id, Pick::Logits(&block[block.len() - vocab..]));
            }
        }
        tracing::trace!(
            tokens = plan.num_tokens(),
            seqs = plan.seqs.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "step"
        );
        Ok(())
    }

    /// The logit rows a chunk needs: every row while its prompt logprobs are being
    /// gathered and it covers a scored position, else the last row when it samples.
    fn rows_of(&self, s: &crate::scheduler::ScheduledSeq) -> LogitRows {
        let scoring = self.requests.get(&s.id).is_some_and(|r| {
            r.prompt_scores.is_some() && s.start_pos + 1 < r.prompt_len && !s.tokens.is_empty()
        });
        if scoring {
            LogitRows::All
        } else if s.needs_logits {
            LogitRows::Last
        } else {
            LogitRows::None
        }
    }

    /// Scores the prompt tokens after positions `start..` of request `id` from `rows`.
    fn record_prompt_scores(&mut self, id: u64, start: usize, rows: &[f32], vocab: usize) {
        if let Some(scores) = self
            .requests
            .get_mut(&id)
            .and_then(|r| r.prompt_scores.as_mut())
        {
            scores.record(start, rows, vocab);
        }
    }

    /// Derives each rank's collective seconds of the step just run from the cumulative
    /// counters.
    fn observe_collectives(&mut self) {
        let totals: Vec<f64> = self
            .coordinator
            .comm_stats()
            .iter()
            .map(|c| c.time.as_secs_f64())
            .collect();
        let ranks = totals.len();
        self.collective_seconds.resize(ranks, 0.0);
        self.counters
            .collective_last_step_seconds
            .resize(ranks, 0.0);
        self.counters
            .collective_step_seconds
            .resize_with(ranks, Histogram::default);
        for (rank, &total) in totals.iter().enumerate() {
            let step = (total - self.collective_seconds[rank]).max(0.0);
            self.collective_seconds[rank] = total;
            self.counters.collective_last_step_seconds[rank] = step;
            self.counters.collective_step_seconds[rank].observe(step);
        }
    }

    /// Samples the next token of request `id` from `logits` and streams it; a request
    /// whose prompt was all it asked for ends here.
    fn advance(&mut self, id: u64, pick: Pick<'_>) {
        let Some(live) = self.requests.get_mut(&id) else {
            return;
        };
        if let Some(scores) = live.prompt_scores.take() {
            let _ = live.events.send(Event::PromptLogprobs(scores.scores));
        }
        if live.params.max_tokens == 0 {
            self.end(id, FinishReason::Length, None);
            return;
        }
        let Sampled {
            token,
            logprob,
            top_logprobs,
        } = match (pick, live.constraint.as_mut()) {
            (Pick::Logits(logits), None) => live.sampler.sample(logits),
            (Pick::Logits(logits), Some(c)) => match c.masked(logits) {
                Ok(masked) => live.sampler.sample(&masked),
                Err(e) => return self.end(id, FinishReason::Error, Some(e.to_string())),
            },
            (Pick::Token(token), _) => live.sampler.accept(token),
        };
        if live.stop_ids.contains(&token) {
            self.end(id, FinishReason::Stop, None);
            return;
        }
        let grammar_done = match live.constraint.as_mut().map(|c| c.accept(token)) {
            None | Some(Ok(false)) => false,
            Some(Ok(true)) => true,
            Some(Err(e)) => return self.end(id, FinishReason::Error, Some(e.to_string())),
        };
        live.generated += 1;
        self.counters.generated_tokens += 1;
        let mut text = match &self.tokenizer {
            Some(t) => live.detok.push(t, token),
            None => String::new(),
        };
        let mut stopped = false;
        if !live.params.stop.is_empty() {
            let step = live.stops.push(&text);
            text = step.emit;
            stopped = step.stopped;
        }
        let logprobs = live.params.logprobs.map(|_| TokenLogprobs {
            logprob: logprob.unwrap_or(f32::NEG_INFINITY),
            top: top_logprobs,
        });
        let _ = live.events.send(Event::Token {
            id: token,
            text,
            logprobs,
        });
        if stopped || grammar_done {
            self.end(id, FinishReason::Stop, None);
            return;
        }
        match self.sched.append_token(id, token) {
            Ok(AppendOutcome::Continue) => {}
            Ok(AppendOutcome::ReachedMaxTokens) => self.end(id, FinishReason::Length, None),
            Err(e) => self.end(id, FinishReason::Error, Some(e.to_string())),
        }
    }

    /// Ends request `id`: frees its blocks, flushes held-back text, sends `Finished`.
    fn end(&mut self, id: u64, reason: FinishReason, error: Option<String>) {
        let Some(mut live) = self.requests.remove(&id) else {
            return;
        };
        // The scheduler may have freed it already (max tokens); either way it is gone after.
        let _ = self.sched.finish(id);
        if reason == FinishReason::Cancelled {
            live.span
                .in_scope(|| tracing::debug!(seq = id, "cancelled: blocks freed"));
        }
        if reason == FinishReason::Length && !live.params.stop.is_empty() {
            let rest = live.stops.finish();
            if !rest.is_empty() {
                let _ = live.events.send(Event::Token {
                    id: u32::MAX,
                    text: rest,
                    logprobs: None,
                });
            }
        }
        let _ = live.events.send(Event::Finished {
            reason,
            usage: Usage {
                prompt_tokens: live.prompt_len,
                completion_tokens: live.generated,
            },
            error,
        });
    }

    fn cancel_all(&mut self) {
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for id in ids {
            self.end(id, FinishReason::Cancelled, None);
        }
        self.publish();
    }

    fn fail_all(&mut self, error: &str) {
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for id in ids {
            self.end(id, FinishReason::Error, Some(error.to_string()));
        }
        self.publish();
    }

    fn publish(&mut self) {
        let prefix = self.sched.prefix_stats();
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        *s = EngineStats {
            running: self.sched.num_running(),
            waiting: self.sched.num_waiting(),
            blocks_used: self.sched.blocks_used(),
            blocks_total: self.sched.blocks_total(),
            prefix_queries: prefix.queries,
            prefix_hits: prefix.hits,
            collective_seconds: self
                .coordinator
                .comm_stats()
                .iter()
                .map(|c| c.time.as_secs_f64())
                .collect(),
            collective_bytes: self
                .coordinator
                .comm_stats()
                .iter()
                .map(|c| c.bytes_moved)
                .collect(),
            ..self.counters.clone()
        };
    }
}

/// How a sequence's next token is chosen: from its logits row, or already chosen by the
/// ranks (plain greedy).
enum Pick<'a> {
    Logits(&'a [f32]),
    Token(u32),
}
