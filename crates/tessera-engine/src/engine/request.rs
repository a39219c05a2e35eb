//! What a caller sends and receives ([`Request`], [`Event`]) and the engine's state of
//! one live request ([`LiveRequest`]): its sampler, stop matching, detokenizer and stream.

use serde::Serialize;
use tokio::sync::mpsc;

use super::detok::Detokenizer;
use crate::constraint::TokenConstraint;
use crate::prompt_scores::PromptScores;
use crate::sampling::{Sampler, SamplingParams, StopMatcher};

/// The id of an [`Event::Token`] that carries only held-back text at the end of a
/// request (no new token): its text is shown, its id and logprobs are not.
pub const FLUSH_TOKEN: u32 = u32::MAX;

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
        /// Its id ([`FLUSH_TOKEN`] for held-back text flushed at the end).
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

/// The engine thread's state of one admitted request.
pub(crate) struct LiveRequest {
    pub(crate) prompt_len: usize,
    /// `Some` until the prompt logprobs (if asked for) are sent.
    pub(crate) prompt_scores: Option<PromptScores>,
    /// The submitter's span, so engine-thread lines about the request carry its fields.
    pub(crate) span: tracing::Span,
    pub(crate) params: SamplingParams,
    pub(crate) sampler: Sampler,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) detok: Detokenizer,
    pub(crate) stops: StopMatcher,
    /// Token ids that end the request: its own plus, unless `ignore_eos`, the model's.
    pub(crate) stop_ids: Vec<u32>,
    pub(crate) generated: usize,
    /// The grammar's matcher, for a constrained request.
    pub(crate) constraint: Option<TokenConstraint>,
}

impl LiveRequest {
    /// The state of `request`, admitted with the model's end-of-sequence ids `default_stop`.
    pub(crate) fn new(
        request: Request,
        constraint: Option<TokenConstraint>,
        events: mpsc::UnboundedSender<Event>,
        span: tracing::Span,
        default_stop: &[u32],
    ) -> Self {
        let mut stop_ids = request.params.stop_token_ids.clone();
        if !request.params.ignore_eos {
            stop_ids.extend(default_stop);
        }
        let prompt_scores = request.params.prompt_logprobs.map(|top| PromptScores {
            prompt: request.prompt.clone(),
            top,
            scores: vec![None; request.prompt.len()],
        });
        Self {
            prompt_len: request.prompt.len(),
            prompt_scores,
            span,
            sampler: Sampler::new(&request.params, &request.prompt),
            stops: StopMatcher::new(&request.params.stop),
            params: request.params,
            events,
            detok: Detokenizer::default(),
            stop_ids,
            generated: 0,
            constraint,
        }
    }
}

/// How a sequence's next token is chosen: from its logits row, or already chosen by the
/// ranks (a plain row: its sampler's `plain_choice`).
pub(crate) enum Pick<'a> {
    /// Sample from this full-vocabulary row.
    Logits(&'a [f32]),
    /// The ranks picked this token by the row's choice.
    Token(u32),
}
