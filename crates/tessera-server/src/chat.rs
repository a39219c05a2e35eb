//! `POST /v1/chat/completions`: messages rendered with the model's chat template (with the
//! generation prompt unless asked otherwise, or leaving the final message open to be
//! continued), `n` choices, streamed or whole.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde_json::Value;
use tessera_engine::constraint::TokenConstraint;
use tessera_engine::sampling::MAX_TOP_LOGPROBS;
use tessera_engine::{TokenLogprobs, FLUSH_TOKEN};
use tracing::Instrument;

use crate::error::ServerError;
use crate::generation::{finish_error, finish_reason_str, Generation};
use crate::request::{read_json, ChatRequest};
use crate::respond::{respond, Respond, Shape};
use crate::response::{
    ChatChoice, ChatChunk, ChatChunkChoice, ChatCompletion, ChatLogprobs, ChatTokenLogprob,
    ChoiceOutput, ChunkUsage, Delta, FunctionDelta, ResponseMessage, ToolCallDelta, UsageOut,
};
use crate::sse::{frame, ChunkFormat};
use crate::state::{unix_now, AppState};
use crate::tools::{self, ToolPlan};
use crate::RequestId;

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
    let plan = tools::plan(
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
        request.parallel_tool_calls,
    )?;
    let native = plan.is_some() && state.tokenizer.template_uses_tools();
    let system_block = plan
        .as_ref()
        .filter(|_| !native)
        .map(ToolPlan::system_block);
    let messages = crate::conversation::messages(&request.messages, native, system_block)?;
    let ending = ending(&request)?;
    let logprobs = logprobs(request.logprobs, request.top_logprobs)?;
    let max_tokens = max_tokens(&request, &common)?;
    let limits = state.limits();
    let sampling = crate::params::sampling(
        &common,
        max_tokens,
        logprobs,
        &limits,
        &state.config.sampling_defaults,
    )?;
    state.check_capacity(sampling.n)?;
    let constraint = constraint(&state, &common, plan.as_ref())?;
    let template_tools = native
        .then(|| serde_json::to_value(request.tools.as_deref().unwrap_or_default()).ok())
        .flatten();
    let prompt = render(&state, messages, template_tools, ending)
        .instrument(span.clone())
        .await?;
    let requests = sampling.requests(&prompt, "messages", &limits)?;
    let generation = Generation::start(Arc::clone(&state), requests, constraint.as_ref(), arrived)
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
    let stream = common.stream.unwrap_or(false);
    let include_usage = common
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let format = ChatChunks {
        meta,
        state: Arc::clone(&state),
        choices: generation.len(),
        usage: ChunkUsage::pending(stream && include_usage),
        held: vec![plan.as_ref().map(|_| String::new()); generation.len()],
        with_logprobs: logprobs.is_some(),
        with_tools: plan.is_some(),
    };
    let shape = Shape {
        prompt_tokens: prompt.len(),
        stream,
        include_usage,
    };
    respond(generation, format, shape, span).await
}

/// The matcher the reply follows: the tool plan's grammar, or the structured output the
/// request asks for.
fn constraint(
    state: &AppState,
    common: &crate::request::CommonParams,
    plan: Option<&ToolPlan>,
) -> Result<Option<TokenConstraint>, ServerError> {
    let requested = crate::structured::requested(common)?;
    let requested = match (plan, requested) {
        (Some(_), Some(r)) => {
            return Err(ServerError::invalid(
                Some(r.field.to_string()),
                format!(
                    "{} cannot be combined with tools unless tool_choice is \"none\".",
                    r.field
                ),
            ))
        }
        (Some(p), None) => crate::structured::Requested {
            grammar: p.grammar(),
            field: "tools",
        },
        (None, Some(r)) => r,
        (None, None) => return Ok(None),
    };
    crate::structured::compile(state, &requested).map(Some)
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

/// Renders and tokenizes the conversation off the async workers.
async fn render(
    state: &Arc<AppState>,
    messages: Vec<Value>,
    tools: Option<Value>,
    ending: Ending,
) -> Result<Vec<u32>, ServerError> {
    let tokenizer = Arc::clone(&state.tokenizer);
    let job = tokio::task::spawn_blocking(move || {
        let rendered = tokenizer
            .render_chat_json(
                &Value::Array(messages.clone()),
                tools.as_ref(),
                ending == Ending::GenerationPrompt,
            )
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
fn open_final_message(mut rendered: String, messages: &[Value]) -> Result<String, ServerError> {
    let bad = |m: &str| {
        ServerError::invalid(
            Some("continue_final_message".to_string()),
            format!("continue_final_message: {m}"),
        )
    };
    let content = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .map(str::trim)
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

impl Respond for ChatChunks {
    type Body = ChatCompletion;

    fn whole(
        &self,
        outputs: Vec<ChoiceOutput>,
        prompt_tokens: usize,
    ) -> Result<ChatCompletion, ServerError> {
        let (state, meta) = (&self.state, &self.meta);
        let (with_logprobs, with_tools) = (self.with_logprobs, self.with_tools);
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
            let calls = with_tools.then(|| tools::parse_calls(&out.text)).flatten();
            let finish_reason = match &calls {
                Some(_) => "tool_calls",
                None => finish_reason_str(reason),
            };
            choices.push(ChatChoice {
                index,
                message: ResponseMessage {
                    role: "assistant",
                    content: calls.is_none().then_some(out.text),
                    tool_calls: calls,
                },
                logprobs,
                finish_reason,
            });
        }
        Ok(ChatCompletion {
            id: meta.id.clone(),
            object: "chat.completion",
            created: meta.created,
            model: meta.model.clone(),
            system_fingerprint: meta.system_fingerprint.clone(),
            choices,
            usage: UsageOut::new(prompt_tokens, completion_tokens),
        })
    }
}

/// Chat chunk shapes for [`sse::response`].
struct ChatChunks {
    meta: Meta,
    state: Arc<AppState>,
    choices: usize,
    /// The `usage` field of every chunk but the usage chunk.
    usage: ChunkUsage,
    /// Per choice, with tools: the text held back while it may still be a tool call
    /// (`None` once it is known to be text, or without tools).
    held: Vec<Option<String>>,
    /// Whether whole responses carry logprobs.
    with_logprobs: bool,
    /// Whether replies are read back as tool calls.
    with_tools: bool,
}

/// How a tool call starts in the reply.
const TOOL_CALL_OPEN: &str = "<tool_call>";

/// Characters of arguments per streamed fragment.
const ARGUMENT_FRAGMENT: usize = 16;

/// The streamed form of `calls`: per call, its index, id and name, then its arguments in
/// fragments.
fn tool_call_deltas(calls: &[tools::ToolCall]) -> Vec<Delta> {
    let mut deltas = Vec::new();
    for (index, call) in calls.iter().enumerate() {
        let one = |d: ToolCallDelta| Delta {
            role: None,
            content: None,
            tool_calls: Some(vec![d]),
        };
        deltas.push(one(ToolCallDelta {
            index,
            id: Some(call.id.clone()),
            kind: Some("function"),
            function: FunctionDelta {
                name: Some(call.function.name.clone()),
                arguments: String::new(),
            },
        }));
        let chars: Vec<char> = call.function.arguments.chars().collect();
        for piece in chars.chunks(ARGUMENT_FRAGMENT) {
            deltas.push(one(ToolCallDelta {
                index,
                id: None,
                kind: None,
                function: FunctionDelta {
                    name: None,
                    arguments: piece.iter().collect(),
                },
            }));
        }
    }
    deltas
}

impl ChatChunks {
    fn delta_chunk(&self, index: usize, delta: Delta) -> String {
        let choice = ChatChunkChoice {
            index,
            delta,
            logprobs: None,
            finish_reason: None,
        };
        self.chunk(vec![choice], self.usage)
    }

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
                    tool_calls: None,
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
        let text = match self.held.get_mut(index).and_then(Option::as_mut) {
            None => text,
            Some(held) => {
                held.push_str(&text);
                let head = held.trim_start();
                if head.is_empty()
                    || TOOL_CALL_OPEN.starts_with(head)
                    || head.starts_with(TOOL_CALL_OPEN)
                {
                    return None;
                }
                // Known to be text: send what was held and stream the rest.
                self.held[index].take().unwrap_or_default()
            }
        };
        if text.is_empty() && logprobs.is_none() {
            return None;
        }
        let delta = Delta {
            role: None,
            content: Some(text),
            tool_calls: None,
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
        let mut frames = String::new();
        let mut reason = reason;
        if let Some(held) = self.held.get_mut(index).and_then(Option::take) {
            let delta = match tools::parse_calls(&held) {
                Some(calls) => {
                    reason = "tool_calls";
                    for d in tool_call_deltas(&calls) {
                        frames += &self.delta_chunk(index, d);
                    }
                    None
                }
                None => Some(Delta {
                    role: None,
                    content: Some(held),
                    tool_calls: None,
                }),
            };
            if let Some(d) = delta.filter(|d| d.content.as_deref() != Some("")) {
                frames += &self.delta_chunk(index, d);
            }
        }
        let choice = ChatChunkChoice {
            index,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(reason),
        };
        frames + &self.chunk(vec![choice], self.usage)
    }

    fn usage(&mut self, usage: UsageOut) -> String {
        self.chunk(Vec::new(), ChunkUsage::Counts(usage))
    }
}
