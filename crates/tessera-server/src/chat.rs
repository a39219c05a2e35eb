//! `POST /v1/chat/completions`: messages rendered with the model's chat template (with the
//! generation prompt), `n` choices, streamed or whole.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use tessera_engine::sampling::MAX_TOP_LOGPROBS;
use tessera_engine::TokenLogprobs;
use tessera_model::ChatMessage;
use tracing::Instrument;

use crate::error::ServerError;
use crate::generation::{finish_error, finish_reason_str, Generation, FLUSH_TOKEN};
use crate::request::{read_json, ChatRequest, InputMessage, MessageContent};
use crate::response::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatLogprobs, ChatTokenLogprob,
    ChoiceOutput, Delta, ResponseMessage, UsageOut,
};
use crate::sse::{self, frame, ChunkFormat};
use crate::state::{unix_now, AppState};
use crate::{json_response, RequestId};

/// Handles one chat completion request.
pub async fn handle(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServerError> {
    let arrived = Instant::now();
    let span = tracing::info_span!("chat", request_id = %request_id.0);
    let (request, common): (ChatRequest, _) =
        read_json(&headers, body, state.config.body_limit).await?;
    state.check_model(&common.model)?;
    let messages = messages(&request.messages)?;
    let logprobs = logprobs(request.logprobs, request.top_logprobs)?;
    let max_tokens = request.max_completion_tokens.or(common.max_tokens);
    let limits = state.limits();
    let sampling = crate::params::sampling(&common, max_tokens, logprobs, &limits)?;
    state.check_capacity(sampling.n)?;
    let prompt = render(&state, messages).instrument(span.clone()).await?;
    let requests = sampling.requests(&prompt, "messages", &limits)?;
    let generation = Generation::start(Arc::clone(&state), requests, arrived)
        .instrument(span.clone())
        .await?;
    span.in_scope(|| {
        tracing::info!(
            prompt_tokens = prompt.len(),
            n = sampling.n,
            stream = common.stream.unwrap_or(false),
            "accepted"
        )
    });
    let meta = Meta {
        id: format!("chatcmpl-{}", crate::routes::fresh_id()),
        created: unix_now(),
        model: state.config.model_name.clone(),
        system_fingerprint: state.config.system_fingerprint.clone(),
    };
    if common.stream.unwrap_or(false) {
        let include_usage = common
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let format = ChatChunks {
            meta,
            state: Arc::clone(&state),
            choices: generation.len(),
        };
        return Ok(sse::response(
            generation,
            format,
            prompt.len(),
            include_usage,
            span,
        ));
    }
    let outputs = crate::collect(generation).instrument(span.clone()).await;
    let body = whole(&state, meta, outputs, prompt.len(), logprobs.is_some())?;
    Ok(json_response(StatusCode::OK, &body))
}

/// `logprobs` + `top_logprobs` as the engine's number of alternatives.
fn logprobs(logprobs: Option<bool>, top: Option<u64>) -> Result<Option<usize>, ServerError> {
    match (logprobs.unwrap_or(false), top) {
        (false, Some(t)) if t > 0 => Err(ServerError::invalid(
            Some("top_logprobs".to_string()),
            "top_logprobs needs logprobs set to true.",
        )),
        (false, _) => Ok(None),
        (true, Some(t)) if t > MAX_TOP_LOGPROBS as u64 => Err(ServerError::invalid(
            Some("top_logprobs".to_string()),
            format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {t}."),
        )),
        (true, t) => Ok(Some(t.unwrap_or(0) as usize)),
    }
}

/// The request's messages as template input; content parts are joined.
fn messages(input: &[InputMessage]) -> Result<Vec<ChatMessage>, ServerError> {
    if input.is_empty() {
        return Err(ServerError::invalid(
            Some("messages".to_string()),
            "messages must hold at least one message.",
        ));
    }
    input
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "developer" => "system",
                r @ ("system" | "user" | "assistant") => r,
                other => {
                    return Err(ServerError::invalid(
                        Some(format!("messages[{i}].role")),
                        format!("Unsupported role {other:?}: use system, developer, user or assistant."),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut text = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => text.push_str(t),
                            _ => {
                                return Err(ServerError::invalid(
                                    Some(format!("messages[{i}].content[{j}]")),
                                    format!("Unsupported content part of type {:?}: only text parts with a `text` field are supported.", p.kind),
                                ))
                            }
                        }
                    }
                    text
                }
            };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

/// Renders and tokenizes the conversation off the async workers.
async fn render(
    state: &Arc<AppState>,
    messages: Vec<ChatMessage>,
) -> Result<Vec<u32>, ServerError> {
    let tokenizer = Arc::clone(&state.tokenizer);
    let job = tokio::task::spawn_blocking(move || {
        let text = tokenizer.render_chat(&messages, true).map_err(|e| {
            ServerError::invalid(
                Some("messages".to_string()),
                format!("The chat template failed on these messages: {e}"),
            )
        })?;
        tokenizer.encode(&text).map_err(|e| {
            ServerError::invalid(
                Some("messages".to_string()),
                format!("Tokenization failed: {e}"),
            )
        })
    });
    job.await
        .map_err(|e| ServerError::Engine(format!("the tokenizer task failed: {e}")))?
}

/// Fields every response and chunk of one request repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    system_fingerprint: String,
}

fn whole(
    state: &AppState,
    meta: Meta,
    outputs: Vec<ChoiceOutput>,
    prompt_tokens: usize,
    with_logprobs: bool,
) -> Result<ChatCompletion, ServerError> {
    let mut choices = Vec::with_capacity(outputs.len());
    let mut completion_tokens = 0;
    for (index, out) in outputs.into_iter().enumerate() {
        let reason = out.finish.unwrap_or(tessera_engine::FinishReason::Error);
        if let Some(e) = finish_error(reason, out.error.as_deref()) {
            return Err(e);
        }
        completion_tokens += out.usage.completion_tokens;
        let logprobs = with_logprobs.then(|| ChatLogprobs {
            content: out
                .tokens
                .iter()
                .map(|(id, lp)| ChatTokenLogprob::new(&state.tokenizer, *id, lp))
                .collect(),
        });
        choices.push(ChatChoice {
            index,
            message: ResponseMessage {
                role: "assistant",
                content: out.text,
            },
            logprobs,
            finish_reason: finish_reason_str(reason),
        });
    }
    Ok(ChatCompletion {
        id: meta.id,
        object: "chat.completion",
        created: meta.created,
        model: meta.model,
        system_fingerprint: meta.system_fingerprint,
        choices,
        usage: UsageOut::new(prompt_tokens, completion_tokens),
    })
}

/// Chat chunk shapes for [`sse::response`].
struct ChatChunks {
    meta: Meta,
    state: Arc<AppState>,
    choices: usize,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<UsageOut>) -> String {
        frame(&ChatChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: self.meta.model.clone(),
            system_fingerprint: self.meta.system_fingerprint.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&mut self) -> Vec<String> {
        (0..self.choices)
            .map(|index| {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                self.chunk(
                    vec![ChatChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )
            })
            .collect()
    }

    fn token(
        &mut self,
        index: usize,
        id: u32,
        text: String,
        logprobs: Option<&TokenLogprobs>,
    ) -> Option<String> {
        let logprobs = logprobs
            .filter(|_| id != FLUSH_TOKEN)
            .map(|lp| ChatLogprobs {
                content: vec![ChatTokenLogprob::new(&self.state.tokenizer, id, lp)],
            });
        if text.is_empty() && logprobs.is_none() {
            return None;
        }
        let delta = Delta {
            role: None,
            content: Some(text),
        };
        Some(self.chunk(
            vec![ChatChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason: None,
            }],
            None,
        ))
    }

    fn finished(&mut self, index: usize, reason: &'static str) -> String {
        let choice = ChatChunkChoice {
            index,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(reason),
        };
        self.chunk(vec![choice], None)
    }

    fn usage(&mut self, usage: UsageOut) -> String {
        self.chunk(Vec::new(), Some(usage))
    }
}
