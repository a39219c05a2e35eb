//! OpenAI response bodies and stream chunks, field for field, plus the per-choice
//! accumulator that non-streaming responses are built from.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use tessera_engine::{FinishReason, TokenLogprobs, Usage, FLUSH_TOKEN};
use tessera_model::TextTokenizer;

/// Token counts of a whole request.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UsageOut {
    /// Prompt tokens (each prompt counted once, whatever `n`).
    pub prompt_tokens: usize,
    /// Generated tokens over every choice.
    pub completion_tokens: usize,
    /// The sum of both.
    pub total_tokens: usize,
}

impl UsageOut {
    /// Usage from the two counts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// The `usage` field of a stream chunk: absent, `null` (every chunk but the last when
/// `stream_options.include_usage` is set, as OpenAI sends it), or the counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChunkUsage {
    /// Not sent (usage was not asked for).
    #[default]
    Absent,
    /// Sent as `null`.
    Null,
    /// The counts of the whole request.
    Counts(UsageOut),
}

impl ChunkUsage {
    /// The field of a chunk before the usage chunk: `null` when usage was asked for.
    pub fn pending(include_usage: bool) -> Self {
        if include_usage {
            Self::Null
        } else {
            Self::Absent
        }
    }

    /// Whether the field is left out.
    pub fn is_absent(&self) -> bool {
        *self == Self::Absent
    }
}

impl Serialize for ChunkUsage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Absent | Self::Null => s.serialize_none(),
            Self::Counts(u) => u.serialize(s),
        }
    }
}

/// The text of one token, as OpenAI reports it in logprobs.
pub fn token_text(tokenizer: &TextTokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// One alternative in chat logprobs.
#[derive(Clone, Debug, Serialize)]
pub struct ChatTopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
}

/// One generated token in chat logprobs.
#[derive(Clone, Debug, Serialize)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
    /// The most likely alternatives at this position.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

impl ChatTokenLogprob {
    /// The entry for token `id` with its engine logprobs.
    pub fn new(tokenizer: &TextTokenizer, id: u32, lp: &TokenLogprobs) -> Self {
        let token = token_text(tokenizer, id);
        Self {
            bytes: token.as_bytes().to_vec(),
            token,
            logprob: lp.logprob,
            top_logprobs: lp
                .top
                .iter()
                .map(|&(alt, logprob)| {
                    let token = token_text(tokenizer, alt);
                    ChatTopLogprob {
                        bytes: token.as_bytes().to_vec(),
                        token,
                        logprob,
                    }
                })
                .collect(),
        }
    }
}

/// `choices[].logprobs` of a chat completion.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// Token-string -> logprob map, serialized in order (most likely first), first key wins.
#[derive(Clone, Debug, Default)]
pub struct OrderedLogprobs(pub Vec<(String, f32)>);

impl Serialize for OrderedLogprobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut map = s.serialize_map(None)?;
        for (k, v) in &self.0 {
            if seen.insert(k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// `choices[].logprobs` of a text completion (the legacy OpenAI shape).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompletionLogprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Each token's log-probability (`null` for an echoed prompt's first token).
    pub token_logprobs: Vec<Option<f32>>,
    /// The top alternatives at each position (`null` where the logprob is).
    pub top_logprobs: Vec<Option<OrderedLogprobs>>,
    /// Character offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Appends token `id`, which starts at character `offset` of the choice's text.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32, lp: &TokenLogprobs, offset: usize) {
        self.push_scored(tokenizer, id, Some(lp), offset);
    }

    /// Appends the tokens of an echoed prompt with their logprobs (`None` for the first),
    /// the first at character 0, each after the text of the ones before.
    pub fn push_prompt(
        &mut self,
        tokenizer: &TextTokenizer,
        prompt: &[u32],
        scores: &[Option<TokenLogprobs>],
    ) {
        let mut offset = 0;
        for (i, &id) in prompt.iter().enumerate() {
            let lp = scores.get(i).and_then(Option::as_ref);
            offset += self.push_scored(tokenizer, id, lp, offset);
        }
    }

    /// Appends one token; returns its length in characters.
    fn push_scored(
        &mut self,
        tokenizer: &TextTokenizer,
        id: u32,
        lp: Option<&TokenLogprobs>,
        offset: usize,
    ) -> usize {
        let text = token_text(tokenizer, id);
        let chars = text.chars().count();
        self.tokens.push(text);
        self.token_logprobs.push(lp.map(|l| l.logprob));
        self.top_logprobs.push(lp.map(|l| {
            OrderedLogprobs(
                l.top
                    .iter()
                    .map(|&(alt, v)| (token_text(tokenizer, alt), v))
                    .collect(),
            )
        }));
        self.text_offset.push(offset);
        chars
    }
}

/// What one choice has produced so far (non-streaming responses).
#[derive(Clone, Debug, Default)]
pub struct ChoiceOutput {
    /// Text so far.
    pub text: String,
    /// `(token id, logprobs)` of each generated token that carried logprobs.
    pub tokens: Vec<(u32, TokenLogprobs)>,
    /// Character offset where each entry of `tokens` starts in `text`.
    pub offsets: Vec<usize>,
    /// How it ended, once it has.
    pub finish: Option<FinishReason>,
    /// The engine's error, if it failed.
    pub error: Option<String>,
    /// Its token counts.
    pub usage: Usage,
    /// The prompt's logprobs, when asked for (echo with logprobs).
    pub prompt_logprobs: Option<Vec<Option<TokenLogprobs>>>,
}

impl ChoiceOutput {
    /// Adds one token event.
    pub fn push_token(&mut self, id: u32, text: &str, logprobs: Option<TokenLogprobs>) {
        if let (Some(lp), true) = (logprobs, id != FLUSH_TOKEN) {
            self.offsets.push(self.text.chars().count());
            self.tokens.push((id, lp));
        }
        self.text.push_str(text);
    }
}

/// A chat message in a response.
#[derive(Clone, Debug, Serialize)]
pub struct ResponseMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text (`null` when the reply is tool calls).
    pub content: Option<String>,
    /// The calls the reply makes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<crate::tools::ToolCall>>,
}

/// One choice of a chat completion.
#[derive(Clone, Debug, Serialize)]
pub struct ChatChoice {
    /// Position among the choices.
    pub index: usize,
    /// The generated message.
    pub message: ResponseMessage,
    /// Per-token logprobs, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
}

/// `object: "chat.completion"`.
#[derive(Clone, Debug, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-...`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// Server build and sharding.
    pub system_fingerprint: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: UsageOut,
}

/// The `delta` of a chat chunk.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Delta {
    /// `assistant` in each choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool calls: each call's index, id and name first, then its argument fragments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One tool call's part in a chat chunk.
#[derive(Clone, Debug, Serialize)]
pub struct ToolCallDelta {
    /// Which call of the reply.
    pub index: usize,
    /// The call's id (first fragment only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function` (first fragment only).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The function's name and an arguments fragment.
    pub function: FunctionDelta,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Clone, Debug, Serialize)]
pub struct FunctionDelta {
    /// The name (first fragment only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text.
    pub arguments: String,
}

/// One choice of a chat chunk.
#[derive(Clone, Debug, Serialize)]
pub struct ChatChunkChoice {
    /// Position among the choices.
    pub index: usize,
    /// What is new.
    pub delta: Delta,
    /// Logprobs of this chunk's token.
    pub logprobs: Option<ChatLogprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<&'static str>,
}

/// `object: "chat.completion.chunk"`.
#[derive(Clone, Debug, Serialize)]
pub struct ChatChunk {
    /// The request's `chatcmpl-...` id (same in every chunk).
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// Server build and sharding.
    pub system_fingerprint: String,
    /// Choices with news (empty in the usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// With `stream_options.include_usage`: `null`, and the counts in the last chunk.
    #[serde(skip_serializing_if = "ChunkUsage::is_absent")]
    pub usage: ChunkUsage,
}

/// One choice of a text completion (or of a chunk of one).
#[derive(Clone, Debug, Serialize)]
pub struct TextChoice {
    /// Position among the choices (prompt index * n + choice).
    pub index: usize,
    /// The text (or this chunk's new text).
    pub text: String,
    /// Logprobs, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length` when done.
    pub finish_reason: Option<&'static str>,
}

/// `object: "text_completion"` (whole responses and stream chunks alike).
#[derive(Clone, Debug, Serialize)]
pub struct TextCompletion {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// Server build and sharding.
    pub system_fingerprint: String,
    /// The choices.
    pub choices: Vec<TextChoice>,
    /// Token counts (streams: `null` with `include_usage`, the counts in the last chunk).
    #[serde(skip_serializing_if = "ChunkUsage::is_absent")]
    pub usage: ChunkUsage,
}
