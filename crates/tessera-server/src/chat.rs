//! `POST /v1/chat/completions`: messages rendered with the model's chat template (with the
//! generation prompt unless asked otherwise, or leaving the final message open to be
//! continued), `n` choices, streamed or whole.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use tessera_engine::sampling::MAX_TOP_LOGPROBS;
use tessera_engine::{TokenLogprobs, FLUSH_TOKEN};
use tessera_model::ChatMessage;
use tracing::Instrument;

use crate::error::ServerError;
use crate::generation::{finish_error, finish_reason_str, Generation};
use crate::request::{read_json, ChatRequest, InputMessage, MessageContent};
use crate::response::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatLogprobs, ChatTokenLogprob,
    ChoiceOutput, ChunkUsage, Delta, ResponseMessage, UsageOut,
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
    let ending = ending(&request)?;
    let logprobs = logprobs(request.logprobs, request.top_logprobs)?;
    let max_tokens = max_tokens(&request, &common)?;
    let limits = state.limits();
    let sampling = crate::params::sampling(&common, max_tokens, logprobs, &limits)?;
    state.check_capacity(sampling.n)?;
    let prompt = render(&state, messages, ending)
        .instrument(span.clone())
        .await?;
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
            usage: ChunkUsage::pending(include_usage),
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

/// The effective `max_tokens`: `max_completion_tokens` (the newer name) wins over
/// `max_tokens` when both are given, as in OpenAI's API; a chat completion asks for at
/// least one token.
fn max_tokens(
    request: &ChatRequest,
    common: &crate::request::CommonParams,
) -> Result<Option<u64>, ServerError> {
    let (name, value) = match (request.max_completion_tokens, common.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    if value == Some(0) {
        return Err(ServerError::invalid(
            Some(name.to_string()),
            format!("{name} must be at least 1."),
        ));
    }
    Ok(value)
}

/// How the rendered conversation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// With the assistant header: the model answers.
    GenerationPrompt,
    /// Right after the last message (no header).
    Closed,
    /// Inside the last message: the model continues it.
    OpenFinalMessage,
}

/// `add_generation_prompt` and `continue_final_message` as one choice.
fn ending(request: &ChatRequest) -> Result<Ending, ServerError> {
    match (
        request.add_generation_prompt,
        request.continue_final_message.unwrap_or(false),
    ) {
        (Some(true), true) => Err(ServerError::invalid(
            Some("continue_final_message".to_string()),
            "continue_final_message and add_generation_prompt cannot both be true.",
        )),
        (_, true) => Ok(Ending::OpenFinalMessage),
        (Some(false), false) => Ok(Ending::Closed),
        (None | Some(true), false) => Ok(Ending::GenerationPrompt),
    }
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
    ending: Ending,
) -> Result<Vec<u32>, ServerError> {
    let tokenizer = Arc::clone(&state.tokenizer);
    let job = tokio::task::spawn_blocking(move || {
        let rendered = tokenizer
            .render_chat(&messages, ending == Ending::GenerationPrompt)
            .map_err(|e| {
                ServerError::invalid(
                    Some("messages".to_string()),
                    format!("The chat template failed on these messages: {e}"),
                )
            })?;
        let text = match ending {
            Ending::OpenFinalMessage => open_final_message(rendered, &messages)?,
            _ => rendered,
        };
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

/// Cuts `rendered` right after the final message's content, dropping the end-of-turn
/// markup the template puts after it, so that generation continues that message.
fn open_final_message(
    mut rendered: String,
    messages: &[ChatMessage],
) -> Result<String, ServerError> {
    let bad = |m: &str| {
        ServerError::invalid(
            Some("continue_final_message".to_string()),
            format!("continue_final_message: {m}"),
        )
    };
    let content = messages
        .last()
        .map(|m| m.content.trim())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("the final message has no content to continue."))?;
    let at = rendered
        .rfind(content)
        .ok_or_else(|| bad("the chat template does not keep the final message's text."))?;
    rendered.truncate(at + content.len());
    Ok(rendered)
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
    /// The `usage` field of every chunk but the usage chunk.
    usage: ChunkUsage,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: ChunkUsage) -> String {
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
                    self.usage,
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
            self.usage,
        ))
    }

    fn finished(&mut self, index: usize, reason: &'static str) -> String {
        let choice = ChatChunkChoice {
            index,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(reason),
        };
        self.chunk(vec![choice], self.usage)
    }

    fn usage(&mut self, usage: UsageOut) -> String {
        self.chunk(Vec::new(), ChunkUsage::Counts(usage))
    }
}
