//! One HTTP request's engine requests (its choices): queue slots, submission, the merged
//! event stream, latency metrics, and cancellation.
//!
//! A [`Generation`] owns the event receivers of its choices. Dropping it (the client went
//! away, or the handler returned early) cancels every unfinished choice in the engine and
//! gives its queue slots back, so nothing is left running for nobody.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tessera_engine::constraint::TokenConstraint;
use tessera_engine::{EngineError, Event, FinishReason, Request, Usage, FLUSH_TOKEN};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ServerError;
use crate::state::AppState;

/// The engine requests behind one HTTP request.
pub struct Generation {
    state: Arc<AppState>,
    ids: Vec<u64>,
    /// `None` once a choice has finished.
    receivers: Vec<Option<UnboundedReceiver<Event>>>,
    arrived: Instant,
    last_token: Vec<Option<Instant>>,
    reserved: usize,
    next_poll: usize,
}

impl Generation {
    /// Reserves queue slots and submits `requests` (one per choice, in choice order), each
    /// with its own copy of `constraint`'s matcher.
    pub async fn start(
        state: Arc<AppState>,
        requests: Vec<Request>,
        constraint: Option<&TokenConstraint>,
        arrived: Instant,
    ) -> Result<Self, ServerError> {
        state.reserve(requests.len())?;
        let mut generation = Self {
            reserved: requests.len(),
            last_token: vec![None; requests.len()],
            ids: Vec::with_capacity(requests.len()),
            receivers: Vec::with_capacity(requests.len()),
            state,
            arrived,
            next_poll: 0,
        };
        for request in requests {
            // On error `generation` is dropped: earlier choices are cancelled, slots released.
            let submission = generation
                .state
                .engine
                .submit_constrained(request, constraint.cloned())
                .await
                .map_err(|e| engine_error(&generation.state, e))?;
            generation.ids.push(submission.id);
            generation.receivers.push(Some(submission.events));
        }
        Ok(generation)
    }

    /// Number of choices.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The next event of any choice, with the choice's index; `None` when all finished.
    pub async fn next(&mut self) -> Option<(usize, Event)> {
        let (i, event) = poll_fn(|cx| {
            let n = self.receivers.len();
            let mut open = false;
            for k in 0..n {
                let i = (self.next_poll + k) % n;
                let Some(rx) = self.receivers[i].as_mut() else {
                    continue;
                };
                open = true;
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(event)) => {
                        self.next_poll = i + 1;
                        return Poll::Ready(Some((i, event)));
                    }
                    Poll::Ready(None) => return Poll::Ready(Some((i, engine_gone()))),
                    Poll::Pending => {}
                }
            }
            if open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })
        .await?;
        self.record(i, &event);
        Some((i, event))
    }

    fn record(&mut self, i: usize, event: &Event) {
        match event {
            Event::Token { id, .. } if *id != FLUSH_TOKEN => {
                let now = Instant::now();
                match self.last_token[i] {
                    None => self.state.metrics.observe_ttft(now - self.arrived),
                    Some(t) => self.state.metrics.observe_itl(now - t),
                }
                self.last_token[i] = Some(now);
            }
            Event::Token { .. } | Event::PromptLogprobs(_) => {}
            Event::Finished { reason, .. } => {
                self.receivers[i] = None;
                self.reserved -= 1;
                self.state.release(1);
                self.state.metrics.count_finished(*reason);
            }
        }
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.arrived.elapsed()
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        let mut cancelled = 0;
        for (id, rx) in self.ids.iter().zip(&self.receivers) {
            if rx.is_some() {
                self.state.engine.cancel(*id);
                self.state.metrics.count_finished(FinishReason::Cancelled);
                cancelled += 1;
            }
        }
        if cancelled > 0 {
            tracing::info!(
                choices = cancelled,
                "client gone: cancelled its unfinished choices"
            );
        }
        self.state.release(self.reserved);
    }
}

/// A `Finished` event for a choice whose engine stream closed without one.
fn engine_gone() -> Event {
    Event::Finished {
        reason: FinishReason::Error,
        usage: Usage::default(),
        error: Some("the engine stopped before the request finished".into()),
    }
}

/// Maps a refused submission to an HTTP error: the request's fault 400, a stopped engine
/// or lost rank 503 (and unhealthy), any other engine fault 500.
pub fn engine_error(state: &AppState, e: EngineError) -> ServerError {
    match e {
        EngineError::BadRequest(message) => ServerError::invalid(None, message),
        EngineError::RankLost(_) | EngineError::Stopped => {
            state.mark_unhealthy();
            ServerError::Unavailable(format!("{e}"))
        }
        EngineError::Internal(_)
        | EngineError::Config(_)
        | EngineError::Model(_)
        | EngineError::Plan(_) => ServerError::Engine(e.to_string()),
    }
}

/// The error to answer for a choice that ended with `reason` (`None` for stop/length).
pub fn finish_error(reason: FinishReason, error: Option<&str>) -> Option<ServerError> {
    match reason {
        FinishReason::Stop | FinishReason::Length => None,
        FinishReason::Cancelled => Some(ServerError::Unavailable(
            "The request was cancelled: the server is shutting down.".into(),
        )),
        FinishReason::Error => Some(ServerError::Engine(
            error.unwrap_or("unknown engine error").to_string(),
        )),
    }
}

/// OpenAI's `finish_reason` string.
pub fn finish_reason_str(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "abort",
        FinishReason::Error => "error",
    }
}
