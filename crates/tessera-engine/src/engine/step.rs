//! The engine thread's loop: take submissions and cancellations, run one scheduled step
//! on the ranks, sample and stream a token for every sequence that reached its last known
//! token, and publish the counters.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tessera_model::{LogitRows, StepSeq, TextTokenizer};

use super::handle::{EngineStats, Msg, Submit};
use super::pace::{self, ItlTarget, StepCostModel};
use super::request::{Event, FinishReason, LiveRequest, Pick, TokenLogprobs, Usage, FLUSH_TOKEN};
use crate::constraint::masks_beside;
use crate::coordinator::{Coordinator, EngineError};
use crate::histogram::Histogram;
use crate::sampling::Sampled;
use crate::scheduler::{AppendOutcome, SchedError, SchedRequest, Scheduler, StepPlan};

/// The engine thread's state: the ranks, the scheduler and every live request.
pub(crate) struct Worker {
    coordinator: Coordinator,
    sched: Scheduler,
    tokenizer: Option<Arc<TextTokenizer>>,
    requests: HashMap<u64, LiveRequest>,
    stats: Arc<Mutex<EngineStats>>,
    counters: EngineStats,
    default_stop: Vec<u32>,
    /// Each rank's cumulative collective seconds after the previous step.
    collective_seconds: Vec<f64>,
    /// Step times measured so far, as a cost model.
    cost: StepCostModel,
    /// The inter-token time prefill budgets aim for.
    itl: ItlTarget,
}

/// The error a submission gets when the scheduler refuses it: the request's own fault
/// (empty, too long for the context or the cache) or the engine's.
fn refusal(e: SchedError) -> EngineError {
    match e {
        SchedError::EmptyPrompt(_)
        | SchedError::TooLong { .. }
        | SchedError::ExceedsCache { .. } => EngineError::BadRequest(e.to_string()),
        other => EngineError::Internal(other.to_string()),
    }
}

impl Worker {
    /// A worker over `coordinator` and `sched` that publishes its counters into `stats`.
    pub(crate) fn new(
        coordinator: Coordinator,
        sched: Scheduler,
        tokenizer: Option<Arc<TextTokenizer>>,
        stats: Arc<Mutex<EngineStats>>,
        default_stop: Vec<u32>,
        itl: ItlTarget,
    ) -> Self {
        Self {
            coordinator,
            sched,
            tokenizer,
            requests: HashMap::new(),
            stats,
            counters: EngineStats::default(),
            default_stop,
            collective_seconds: Vec::new(),
            cost: StepCostModel::default(),
            itl,
        }
    }

    /// Runs until every handle is gone (then cancels what is left) or a step fails (then
    /// fails every request).
    pub(crate) fn run(&mut self, rx: Receiver<Msg>) {
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
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
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
            Msg::Submit(submit) => self.admit(*submit),
            Msg::Cancel(id) => self.end(id, FinishReason::Cancelled, None),
        }
    }

    /// Hands a submission to the scheduler and answers the submitter.
    fn admit(&mut self, submit: Submit) {
        let Submit {
            id,
            request,
            constraint,
            events,
            reply,
            span,
        } = submit;
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
                let live = LiveRequest::new(request, constraint, events, span, &self.default_stop);
                self.requests.insert(id, live);
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(refusal(e)));
            }
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
        let (cost, itl) = (&self.cost, self.itl);
        let mut plan = self
            .sched
            .schedule_paced(|shape| pace::prefill_budget(cost, itl, shape));
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
        self.run_plan(&mut plan)?;
        let seconds = started.elapsed().as_secs_f64();
        let decodes = plan.seqs.iter().filter(|s| s.tokens.len() == 1).count();
        let prefill = plan.num_tokens() - decodes;
        self.cost.observe(prefill, decodes, seconds);
        tracing::trace!(prefill, decodes, ms = seconds * 1e3, "step");
        Ok(())
    }

    /// Runs `plan` on the ranks and advances every sequence that samples.
    fn run_plan(&mut self, plan: &mut StepPlan) -> Result<(), EngineError> {
        // The scheduler asks for the last row of exactly the chunks that sample; scoring a
        // prompt widens that to every row, so which chunks sample is noted first.
        let samples: Vec<bool> = plan
            .seqs
            .iter()
            .map(|s| s.logits != LogitRows::None)
            .collect();
        for s in &mut plan.seqs {
            s.logits = self.rows_of(s);
        }
        for s in &plan.seqs {
            if self.requests.get(&s.id).is_some_and(|r| r.generated == 0) {
                self.counters.computed_prompt_tokens += s.tokens.len() as u64;
            }
        }
        // When every row sampled is plain (temperature, top-k and top-p only: no bias,
        // penalty, min_p, logprobs or grammar) and no prompt is scored, the ranks return
        // only the chosen ids (a GPU picks them where the logits are, and no logits row
        // crosses to the host). Otherwise plain rows are picked on the host from their
        // rows by the same rule and the same draw, so a request's tokens do not depend on
        // which requests share its step.
        let plain = plan.seqs.iter().all(|s| s.logits != LogitRows::All)
            && sampling(plan, &samples).all(|s| {
                self.requests
                    .get(&s.id)
                    .is_some_and(|r| r.sampler.is_plain() && r.constraint.is_none())
            });
        if plain {
            self.run_choose(plan, &samples)
        } else {
            self.run_logits(plan, &samples)
        }
    }

    /// Runs a step whose sampled rows are all plain: each request draws its row's choice,
    /// and the ranks return the ids.
    fn run_choose(&mut self, plan: &StepPlan, samples: &[bool]) -> Result<(), EngineError> {
        let sampled: Vec<u64> = sampling(plan, samples).map(|s| s.id).collect();
        let choices = sampled
            .iter()
            .map(|id| {
                let live = self.requests.get_mut(id);
                live.and_then(|r| r.sampler.plain_choice()).ok_or_else(|| {
                    EngineError::Internal(format!("sequence {id} is not a plain sampled row"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ids = self.coordinator.step_choose(plan.seqs.clone(), choices)?;
        self.counters.steps += 1;
        self.observe_collectives();
        if ids.len() != sampled.len() {
            return Err(EngineError::Internal(format!(
                "the ranks returned {} tokens for {} sequences",
                ids.len(),
                sampled.len()
            )));
        }
        for (id, token) in sampled.into_iter().zip(ids) {
            self.advance(id, Pick::Token(token));
        }
        Ok(())
    }

    /// Runs a step that returns logits rows, scores prompts and samples from the rows.
    fn run_logits(&mut self, plan: &StepPlan, samples: &[bool]) -> Result<(), EngineError> {
        // Constrained rows' masks are computed while the ranks run the forward pass.
        let constraints = self
            .requests
            .values_mut()
            .filter_map(|r| r.constraint.as_mut())
            .collect();
        let coordinator = &mut self.coordinator;
        let logits = masks_beside(constraints, || coordinator.step(plan.seqs.clone()))?;
        self.counters.steps += 1;
        self.observe_collectives();
        let vocab = self.coordinator.config().shape.vocab;
        let mut offset = 0;
        for (s, &sample) in plan.seqs.iter().zip(samples) {
            let n = s.logits.count(s.tokens.len());
            let Some(block) = logits.get(offset * vocab..(offset + n) * vocab) else {
                return Err(EngineError::Internal(format!(
                    "the ranks returned {} logit rows, fewer than the step asked for",
                    logits.len() / vocab.max(1)
                )));
            };
            offset += n;
            if s.logits == LogitRows::All {
                self.record_prompt_scores(s.id, s.start, block, vocab);
            }
            if sample {
                self.advance(s.id, Pick::Logits(&block[block.len() - vocab..]));
            }
        }
        Ok(())
    }

    /// The logit rows a chunk needs: every row while its prompt logprobs are being
    /// gathered and it covers a scored position, else what the scheduler asked for (the
    /// last row when it samples).
    fn rows_of(&self, s: &StepSeq) -> LogitRows {
        let scoring = self.requests.get(&s.id).is_some_and(|r| {
            r.prompt_scores.is_some() && s.start + 1 < r.prompt_len && !s.tokens.is_empty()
        });
        if scoring {
            LogitRows::All
        } else {
            s.logits
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
                    id: FLUSH_TOKEN,
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

/// The sequences of `plan` that sample a token this step (`samples[i]` for `plan.seqs[i]`).
fn sampling<'a>(plan: &'a StepPlan, samples: &'a [bool]) -> impl Iterator<Item = &'a StepSeq> {
    plan.seqs
        .iter()
        .zip(samples)
        .filter_map(|(s, &sample)| sample.then_some(s))
}
