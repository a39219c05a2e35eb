//! OpenAI request bodies as typed structs, and reading them from a request body.
//!
//! Reading goes bytes -> UTF-8 -> JSON value -> typed struct, so each failure gets its own
//! message: a body over the limit (413), invalid UTF-8, malformed JSON, and a known field
//! of the wrong type (400, with the field's path as `param`). Unknown fields that change
//! nothing Tessera computes (`user`, `metadata`, `store`, ...) are accepted, like OpenAI's
//! API does; fields whose meaning Tessera cannot honour are refused by name
//! ([`refuse_unsupported`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::ServerError;

/// Reads and parses a JSON body of at most `limit` bytes into the endpoint's own fields
/// and the shared ones.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(T, CommonParams), ServerError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ServerError::BodyTooLarge { limit });
    }
    let collected = Limited::new(body, limit).collect().await.map_err(|e| {
        if is_length_limit(&*e) {
            ServerError::BodyTooLarge { limit }
        } else {
            ServerError::invalid(None, format!("Could not read the request body: {e}"))
        }
    })?;
    let bytes = collected.to_bytes();
    parse_json(&bytes)
}

/// Whether `e` (or an error it wraps) is the body length limit.
fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Parses `bytes` as UTF-8 JSON into `T` and [`CommonParams`] (two passes over one value,
/// rather than `#[serde(flatten)]`, which would lose the path of a mistyped field).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, CommonParams), ServerError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ServerError::invalid(
            None,
            format!("The request body is not valid UTF-8 ({e}); send UTF-8 encoded JSON."),
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        ServerError::invalid(
            None,
            format!("The request body is not valid JSON ({e}); check its syntax."),
        )
    })?;
    if !value.is_object() {
        return Err(ServerError::invalid(
            None,
            "The request body must be a JSON object.",
        ));
    }
    refuse_unsupported(&value)?;
    let common = typed(&value)?;
    Ok((typed(&value)?, common))
}

fn typed<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ServerError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        let where_ = param.as_deref().unwrap_or("the request");
        ServerError::invalid(
            param.clone(),
            format!("Invalid value for {where_}: {}", e.inner()),
        )
    })
}

/// One string or a list of strings (`stop`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single string.
    One(String),
    /// A list of strings.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The strings, as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage of the whole request.
    pub include_usage: Option<bool>,
}

/// Fields shared by chat and text completions (OpenAI's, plus vLLM's sampling extensions).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CommonParams {
    /// The served model's name.
    pub model: String,
    /// Most tokens to generate (default: the rest of the context).
    pub max_tokens: Option<u64>,
    /// Sampling temperature (default 1; 0 is greedy).
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Keep only the k most likely tokens (0 or -1 is off; vLLM extension).
    pub top_k: Option<i64>,
    /// Minimum probability relative to the most likely token (vLLM extension).
    pub min_p: Option<f32>,
    /// OpenAI presence penalty.
    pub presence_penalty: Option<f32>,
    /// OpenAI frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// HF-style repetition penalty (vLLM extension).
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string) to bias added to its logit.
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Strings that end generation.
    pub stop: Option<OneOrMany>,
    /// Token ids that end generation (vLLM extension).
    pub stop_token_ids: Option<Vec<u32>>,
    /// Keep generating past end-of-sequence (vLLM extension).
    pub ignore_eos: Option<bool>,
    /// How many completions to generate per prompt.
    pub n: Option<u64>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// End-user id (accepted and ignored).
    #[allow(dead_code)] // Parsed so that a mistyped value is refused like OpenAI does.
    pub user: Option<String>,
    /// OpenAI structured output: `{"type": "text" | "json_object" | "json_schema", ...}`.
    pub response_format: Option<serde_json::Value>,
    /// vLLM extension: the output is JSON valid under this schema (object or JSON text).
    pub guided_json: Option<serde_json::Value>,
    /// vLLM extension: the output matches this regular expression.
    pub guided_regex: Option<String>,
    /// vLLM extension: the output is exactly one of these strings.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM extension: the output follows this grammar (llguidance's Lark syntax).
    pub guided_grammar: Option<String>,
}

/// Request fields whose meaning Tessera cannot honour: refused (400, naming the field)
/// rather than silently ignored. `modalities` is allowed when it asks for text only.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("audio", "audio output is not supported"),
    ("prediction", "predicted outputs are not supported"),
    ("web_search_options", "web search is not supported"),
    (
        "functions",
        "the legacy `functions` field is not supported; use `tools`",
    ),
    (
        "function_call",
        "the legacy `function_call` field is not supported; use `tool_choice`",
    ),
    (
        "reasoning_effort",
        "the served model does not reason; reasoning_effort is not supported",
    ),
    (
        "guided_decoding_backend",
        "only the llguidance backend is available",
    ),
    (
        "guided_whitespace_pattern",
        "guided_whitespace_pattern is not supported",
    ),
];

/// Refuses the fields of `body` that ask for something Tessera cannot do.
pub fn refuse_unsupported(body: &serde_json::Value) -> Result<(), ServerError> {
    for (field, why) in UNSUPPORTED {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(ServerError::invalid(
                Some((*field).to_string()),
                format!("{field}: {why}."),
            ));
        }
    }
    if let Some(m) = body.get("modalities").filter(|v| !v.is_null()) {
        if m != &serde_json::json!(["text"]) {
            return Err(ServerError::invalid(
                Some("modalities".to_string()),
                "modalities: only [\"text\"] output is supported.",
            ));
        }
    }
    Ok(())
}

/// A part of a message's content list.
#[derive(Clone, Debug, Deserialize)]
pub struct ContentPart {
    /// The part type; only `text` is supported.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// A message's content: a string or a list of parts.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// A list of typed parts.
    Parts(Vec<ContentPart>),
}

/// One input chat message.
#[derive(Clone, Debug, Deserialize)]
pub struct InputMessage {
    /// system, developer, user or assistant.
    pub role: String,
    /// The content (absent or null for an assistant message is read as empty).
    pub content: Option<MessageContent>,
    /// A participant name (accepted and ignored).
    #[allow(dead_code)] // Parsed so that a mistyped value is refused like OpenAI does.
    pub name: Option<String>,
    /// The calls an `assistant` message made.
    pub tool_calls: Option<Vec<crate::tools::InputToolCall>>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

/// `POST /v1/chat/completions` (besides [`CommonParams`]).
#[derive(Clone, Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<InputMessage>,
    /// The newer name of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<u64>,
    /// Return the log-probability of each generated token.
    pub logprobs: Option<bool>,
    /// How many alternatives to return per token (0..=20; needs `logprobs`).
    pub top_logprobs: Option<u64>,
    /// End the rendered prompt with the template's assistant header (default true).
    pub add_generation_prompt: Option<bool>,
    /// Leave the final message open so that the model continues it (default false;
    /// excludes `add_generation_prompt`).
    pub continue_final_message: Option<bool>,
    /// Functions the model may call.
    pub tools: Option<Vec<crate::tools::ToolSpec>>,
    /// `none`, `auto`, `required` or `{"type":"function","function":{"name":..}}`.
    pub tool_choice: Option<serde_json::Value>,
    /// Whether one reply may hold several calls (default true).
    pub parallel_tool_calls: Option<bool>,
}

/// A prompt of a text completion.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One text.
    Text(String),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several texts.
    Texts(Vec<String>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions` (besides [`CommonParams`]).
#[derive(Clone, Debug, Deserialize)]
pub struct CompletionRequest {
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Prepend the prompt to the completion text.
    pub echo: Option<bool>,
    /// Return this many top alternatives per token (0..=20) with each token's logprob.
    pub logprobs: Option<u64>,
    /// Accepted only when equal to `n` (no server-side best-of selection).
    pub best_of: Option<u64>,
    /// Text after the completion (not supported; must be absent or empty).
    pub suffix: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ServerError {
        parse_json::<ChatRequest>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn minimal_chat_request_parses_with_unknown_fields_ignored() {
        let (r, common): (ChatRequest, _) = parse_json(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"frobnicate":3,"temperature":0}"#,
        )
        .unwrap();
        assert_eq!(common.model, "m");
        assert_eq!(common.temperature, Some(0.0));
        assert_eq!(r.messages.len(), 1);
    }

    #[test]
    fn wrong_type_names_the_field_as_param() {
        for (field, value) in [
            ("temperature", "\"hot\""),
            ("max_tokens", "-3"),
            ("stream", "1"),
        ] {
            let e = err(&format!(
                r#"{{"model":"m","messages":[],"{field}":{value}}}"#
            ));
            match e {
                ServerError::InvalidRequest { param, .. } => {
                    assert_eq!(param.as_deref(), Some(field))
                }
                other => panic!("{other:?}"),
            }
        }
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#);
        match e {
            ServerError::InvalidRequest { param, .. } => {
                assert_eq!(param.as_deref(), Some("messages[0].content"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_json_and_bad_utf8_are_invalid_requests() {
        assert_eq!(err("{\"model\": ").status(), 400);
        assert_eq!(err("[1,2]").status(), 400);
        let e = parse_json::<ChatRequest>(b"{\"model\":\"\xff\"}").unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
    }

    #[test]
    fn prompt_forms_parse() {
        let p = |s: &str| {
            parse_json::<CompletionRequest>(format!(r#"{{"model":"m","prompt":{s}}}"#).as_bytes())
                .unwrap()
                .0
                .prompt
        };
        assert!(matches!(p(r#""a""#), PromptInput::Text(_)));
        assert!(matches!(p("[1,2]"), PromptInput::Tokens(_)));
        assert!(matches!(p(r#"["a","b"]"#), PromptInput::Texts(_)));
        assert!(matches!(p("[[1],[2,3]]"), PromptInput::TokenLists(_)));
    }

    #[tokio::test]
    async fn body_over_the_limit_is_413_with_or_without_content_length() {
        let big = vec![b' '; 100];
        let none = HeaderMap::new();
        let e = read_json::<ChatRequest>(&none, Body::from(big.clone()), 99)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 413);
        let stream = futures_util::stream::iter(
            big.chunks(10)
                .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        );
        let e = read_json::<ChatRequest>(&none, Body::from_stream(stream), 99)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 413);
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, "1000000".parse().unwrap());
        let e = read_json::<ChatRequest>(&declared, Body::empty(), 99)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 413);
        let ok =
            read_json::<ChatRequest>(&none, Body::from(r#"{"model":"m","messages":[]}"#), 99).await;
        assert!(ok.is_ok());
    }

    #[test]
    fn unsupported_fields_are_refused_by_name_and_harmless_ones_accepted() {
        for (extra, field) in [
            (r#""audio":{"voice":"alloy"}"#, "audio"),
            (r#""modalities":["text","audio"]"#, "modalities"),
            (r#""functions":[]"#, "functions"),
            (r#""prediction":{"type":"content"}"#, "prediction"),
        ] {
            let e = err(&format!(r#"{{"model":"m","messages":[],{extra}}}"#));
            match e {
                ServerError::InvalidRequest { param, .. } => {
                    assert_eq!(param.as_deref(), Some(field))
                }
                other => panic!("{other:?}"),
            }
        }
        let ok = parse_json::<ChatRequest>(
            br#"{"model":"m","messages":[],"user":"u","metadata":{"a":"b"},"store":true,"modalities":["text"],"audio":null}"#,
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn missing_model_is_reported() {
        let e = err(r#"{"messages":[]}"#);
        assert!(e.to_string().contains("model"), "{e}");
    }
}
