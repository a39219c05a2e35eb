//! `POST /v1/completions`: one or more prompts (text or token ids), `n` choices each,
//! optional echo, logprobs in the legacy shape, streamed or whole.
//!
//! `echo` with `logprobs` also scores the prompt: each prompt token's logprob given the
//! tokens before it (`null` for the first), from the logits at every prompt position.
//! With `max_tokens: 0` nothing is generated, which is how evaluation harnesses score a
//! text (`finish_reason` is then `length`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use tessera_engine::sampling::MAX_TOP_LOGPROBS;
use tessera_engine::{FinishReason, TokenLogprobs, FLUSH_TOKEN};
use tracing::Instrument;

use crate::error::ServerError;
use crate::generation::{finish_error, finish_reason_str, Generation};
use crate::request::{read_json, CommonParams, CompletionRequest, PromptInput};
use crate::respond::{respond, Respond, Shape};
use crate::response::{
    ChoiceOutput, ChunkUsage, CompletionLogprobs, TextChoice, TextCompletion, UsageOut,
};
use crate::sse::{frame, ChunkFormat};
use crate::state::{unix_now, AppState};
use crate::RequestId;

/// `max_tokens` when a request leaves it out (OpenAI's and vLLM's default here).
const DEFAULT_MAX_TOKENS: usize = 16;

/// One prompt, tokenized, with its text (for `echo`).
struct Prompt {
    ids: Vec<u32>,
    text: String,
}

/// Handles one text completion request.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let arrived = Instant::now();
    let span = tracing::info_span!("completion", request_id = %request_id.0);
    let (request, common): (CompletionRequest, _) =
        read_json(&headers, body, state.config.body_limit).await?;
    state.check_model(&common.model)?;
    let echo = request.echo.unwrap_or(false);
    let logprobs = check_options(&request, &common)?;
    let limits = state.limits();
    let mut sampling = crate::params::sampling(
        &common,
        common.max_tokens,
        logprobs,
        &limits,
        &state.config.sampling_defaults,
    )?;
    sampling.default_max_tokens = Some(DEFAULT_MAX_TOKENS);
    let constraint = match crate::structured::requested(&common)? {
        Some(r) => Some(crate::structured::compile(&state, &r)?),
        None => None,
    };
    if echo {
        sampling.params.prompt_logprobs = logprobs;
    }
    let prompts = tokenize(&state, request.prompt, echo)
        .instrument(span.clone())
        .await?;
    state.check_capacity(prompts.len() * sampling.n)?;
    let mut requests = Vec::new();
    for p in &prompts {
        requests.extend(sampling.requests(&p.ids, "prompt", &limits)?);
    }
    let prompt_tokens: usize = prompts.iter().map(|p| p.ids.len()).sum();
    let generation = Generation::start(Arc::clone(&state), requests, constraint.as_ref(), arrived)
        .instrument(span.clone())
        .await?;
    let stream = common.stream.unwrap_or(false);
    span.in_scope(|| {
        tracing::info!(
            prompts = prompts.len(),
            prompt_tokens,
            n = sampling.n,
            stream,
            "accepted"
        )
    });
    let include_usage = common
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let meta = text_chunks(
        &state,
        &prompts,
        generation.len(),
        sampling.n,
        echo,
        logprobs.is_some(),
        stream && include_usage,
    );
    let shape = Shape {
        prompt_tokens,
        stream,
        include_usage,
    };
    respond(generation, meta, shape, span).await
}

/// What every chunk of the response shares. Choice `i` answers prompt `i / n`; with
/// `echo` its text starts with its prompt's text (and, with `logprobs`, the prompt's ids
/// are scored too).
fn text_chunks(
    state: &Arc<AppState>,
    prompts: &[Prompt],
    choices: usize,
    n: usize,
    echo: bool,
    logprobs: bool,
    usage: bool,
) -> TextChunks {
    let prefixes: Vec<String> = (0..choices)
        .map(|i| {
            if echo {
                prompts[i / n].text.clone()
            } else {
                String::new()
            }
        })
        .collect();
    TextChunks {
        echo_prompts: (0..choices)
            .map(|i| {
                if echo && logprobs {
                    prompts[i / n].ids.clone()
                } else {
                    Vec::new()
                }
            })
            .collect(),
        usage: ChunkUsage::pending(usage),
        id: format!("cmpl-{}", crate::routes::fresh_id()),
        created: unix_now(),
        model: state.config.model_name.clone(),
        system_fingerprint: state.config.system_fingerprint.clone(),
        offsets: prefixes.iter().map(|p| p.chars().count()).collect(),
        prefixes,
        state: Arc::clone(state),
        with_logprobs: logprobs,
    }
}

/// Checks the fields only text completions have; returns the engine's logprobs setting.
fn check_options(
    request: &CompletionRequest,
    common: &CommonParams,
) -> Result<Option<usize>, ServerError> {
    let n = common.n.unwrap_or(1);
    if request.best_of.is_some_and(|b| b != n) {
        return Err(ServerError::invalid(
            Some("best_of".to_string()),
            "best_of is not supported unless it equals n.",
        ));
    }
    if request.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ServerError::invalid(
            Some("suffix".to_string()),
            "suffix is not supported.",
        ));
    }
    match request.logprobs {
        Some(k) if k > MAX_TOP_LOGPROBS as u64 => Err(ServerError::invalid(
            Some("logprobs".to_string()),
            format!("logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
        )),
        k => Ok(k.map(|k| k as usize)),
    }
}

/// Tokenizes (or checks and decodes) the prompts off the async workers.
async fn tokenize(
    state: &Arc<AppState>,
    input: PromptInput,
    echo: bool,
) -> Result<Vec<Prompt>, ServerError> {
    let tokenizer = Arc::clone(&state.tokenizer);
    let vocab = state.engine.vocab();
    let max_prompts = state.config.max_prompts;
    let job = tokio::task::spawn_blocking(move || {
        let bad = |m: String| ServerError::invalid(Some("prompt".to_string()), m);
        let (texts, lists) = match input {
            PromptInput::Text(t) => (vec![t], Vec::new()),
            PromptInput::Texts(t) => (t, Vec::new()),
            PromptInput::Tokens(ids) => (Vec::new(), vec![ids]),
            PromptInput::TokenLists(l) => (Vec::new(), l),
        };
        let count = texts.len() + lists.len();
        if count == 0 {
            return Err(bad("prompt must not be an empty list.".into()));
        }
        if count > max_prompts {
            return Err(bad(format!(
                "At most {max_prompts} prompts per request, got {count}."
            )));
        }
        let mut prompts = Vec::with_capacity(count);
        for text in texts {
            let ids = tokenizer
                .encode(&text)
                .map_err(|e| bad(format!("Tokenization failed: {e}")))?;
            prompts.push(Prompt { ids, text });
        }
        for ids in lists {
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(bad(format!(
                    "Token id {id} is not in the vocabulary (ids must be below {vocab})."
                )));
            }
            let text = if echo {
                tokenizer
                    .decode(&ids, false)
                    .map_err(|e| bad(format!("Decoding failed: {e}")))?
            } else {
                String::new()
            };
            prompts.push(Prompt { ids, text });
        }
        Ok(prompts)
    });
    job.await
        .map_err(|e| ServerError::Engine(format!("the tokenizer task failed: {e}")))?
}

/// Text completion shapes, whole and streamed.
struct TextChunks {
    id: String,
    created: u64,
    model: String,
    system_fingerprint: String,
    /// Echoed prompt text per choice.
    prefixes: Vec<String>,
    /// Characters sent so far per choice (for `text_offset`).
    offsets: Vec<usize>,
    state: Arc<AppState>,
    with_logprobs: bool,
    /// Per choice: the prompt ids to echo with their logprobs (empty unless echo and
    /// logprobs); streams send such a prompt when its logprobs arrive, not at the opening.
    echo_prompts: Vec<Vec<u32>>,
    /// The `usage` field of every stream chunk but the usage chunk.
    usage: ChunkUsage,
}

impl Respond for TextChunks {
    type Body = TextCompletion;

    fn whole(
        &self,
        outputs: Vec<ChoiceOutput>,
        prompt_tokens: usize,
    ) -> Result<TextCompletion, ServerError> {
        self.whole_body(outputs, prompt_tokens)
    }
}

impl TextChunks {
    fn body(&self, choices: Vec<TextChoice>, usage: ChunkUsage) -> TextCompletion {
        TextCompletion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: self.system_fingerprint.clone(),
            choices,
            usage,
        }
    }

    fn whole_body(
        &self,
        outputs: Vec<ChoiceOutput>,
        prompt_tokens: usize,
    ) -> Result<TextCompletion, ServerError> {
        let mut choices = Vec::with_capacity(outputs.len());
        let mut completion_tokens = 0;
        for (index, out) in outputs.into_iter().enumerate() {
            let reason = out.finish.unwrap_or(FinishReason::Error);
            if let Some(e) = finish_error(reason, out.error.as_deref()) {
                return Err(e);
            }
            completion_tokens += out.usage.completion_tokens;
            // Generated tokens start after the echoed text (`prefixes[index]`).
            let start = self.offsets[index];
            let logprobs = self.with_logprobs.then(|| {
                let mut lp = CompletionLogprobs::default();
                if let Some(scores) = &out.prompt_logprobs {
                    let prompt = &self.echo_prompts[index];
                    lp.push_prompt(&self.state.tokenizer, prompt, scores);
                }
                for ((id, l), off) in out.tokens.iter().zip(&out.offsets) {
                    lp.push(&self.state.tokenizer, *id, l, start + off);
                }
                lp
            });
            choices.push(TextChoice {
                index,
                text: format!("{}{}", self.prefixes[index], out.text),
                logprobs,
                finish_reason: Some(finish_reason_str(reason)),
            });
        }
        Ok(self.body(
            choices,
            ChunkUsage::Counts(UsageOut::new(prompt_tokens, completion_tokens)),
        ))
    }
}

impl ChunkFormat for TextChunks {
    fn opening(&mut self) -> Vec<String> {
        let mut frames = Vec::new();
        for (index, prefix) in self.prefixes.iter().enumerate() {
            if !prefix.is_empty() && self.echo_prompts[index].is_empty() {
                let choice = TextChoice {
                    index,
                    text: prefix.clone(),
                    logprobs: None,
                    finish_reason: None,
                };
                frames.push(frame(&self.body(vec![choice], self.usage)));
            }
        }
        frames
    }

    fn prompt_logprobs(
        &mut self,
        index: usize,
        scores: Vec<Option<TokenLogprobs>>,
    ) -> Option<String> {
        let prompt = self.echo_prompts.get(index).filter(|p| !p.is_empty())?;
        let mut lp = CompletionLogprobs::default();
        lp.push_prompt(&self.state.tokenizer, prompt, &scores);
        let choice = TextChoice {
            index,
            text: self.prefixes[index].clone(),
            logprobs: Some(lp),
            finish_reason: None,
        };
        Some(frame(&self.body(vec![choice], self.usage)))
    }

    fn token(
        &mut self,
        index: usize,
        id: u32,
        text: String,
        logprobs: Option<&TokenLogprobs>,
    ) -> Option<String> {
        let logprobs = logprobs.filter(|_| id != FLUSH_TOKEN).map(|l| {
            let mut lp = CompletionLogprobs::default();
            lp.push(&self.state.tokenizer, id, l, self.offsets[index]);
            lp
        });
        if text.is_empty() && logprobs.is_none() {
            return None;
        }
        self.offsets[index] += text.chars().count();
        let choice = TextChoice {
            index,
            text,
            logprobs,
            finish_reason: None,
        };
        Some(frame(&self.body(vec![choice], self.usage)))
    }

    fn finished(&mut self, index: usize, reason: &'static str) -> String {
        let choice = TextChoice {
            index,
            text: String::new(),
            logprobs: None,
            finish_reason: Some(reason),
        };
        frame(&self.body(vec![choice], self.usage))
    }

    fn usage(&mut self, usage: UsageOut) -> String {
        frame(&self.body(Vec::new(), ChunkUsage::Counts(usage)))
    }
}
