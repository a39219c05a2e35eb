//! Summarizing one document with the engine, map-reduce style when it is too long.
//!
//! A document whose prompt (instruction + text) leaves no room for `max_tokens` in the
//! context is handled by the overflow policy: cut to fit, refused, or split into chunks
//! that fit (see [`crate::chunk`]), each summarized, and the joined summaries summarized
//! again, until one prompt fits.

use std::sync::Arc;

use tessera_engine::sampling::SamplingParams;
use tessera_engine::{EngineHandle, Event, FinishReason, Request};
use tessera_model::{ChatMessage, TextTokenizer};

use crate::chunk::split_to_fit;
use crate::error::BatchError;

/// The built-in instruction; `{text}` is replaced by the document.
pub const DEFAULT_TEMPLATE: &str = "Summarize the following text in a few sentences.\n\n{text}";

/// Tokens kept free besides the instruction, for tokenization differences at the seams.
const MARGIN: usize = 8;

/// Most rounds of map-reduce before giving up on a document.
const MAX_ROUNDS: usize = 8;

/// What to do with a document that does not fit the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Keep the first tokens that fit.
    Truncate,
    /// Split, summarize the chunks, summarize the summaries.
    MapReduce,
    /// Fail the document.
    Error,
}

impl OverflowPolicy {
    /// Parses `truncate`, `map-reduce` or `error`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "truncate" => Some(Self::Truncate),
            "map-reduce" => Some(Self::MapReduce),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

/// A finished summary and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The summary text.
    pub text: String,
    /// Prompt tokens over every engine request of the document.
    pub prompt_tokens: usize,
    /// Generated tokens over every engine request.
    pub completion_tokens: usize,
    /// Engine requests made (1 when the document fit).
    pub requests: usize,
}

/// Summarizes documents through a running engine.
pub struct Summarizer {
    engine: EngineHandle,
    tokenizer: Arc<TextTokenizer>,
    template: String,
    max_tokens: usize,
    context: usize,
    policy: OverflowPolicy,
    overhead: usize,
}

impl Summarizer {
    /// A summarizer with instruction `template` (holds `{text}`) for a `context`-token window.
    pub fn new(
        engine: EngineHandle,
        tokenizer: Arc<TextTokenizer>,
        template: String,
        max_tokens: usize,
        context: usize,
        policy: OverflowPolicy,
    ) -> Result<Self, BatchError> {
        if !template.contains("{text}") {
            return Err(BatchError::Config(
                "the prompt template must contain {text} where the document goes".into(),
            ));
        }
        let mut s = Self {
            engine,
            tokenizer,
            template,
            max_tokens: max_tokens.max(1),
            context,
            policy,
            overhead: 0,
        };
        s.overhead = s
            .prompt_ids("")
            .map_err(|e| BatchError::Config(format!("cannot build a summary prompt: {e}")))?
            .len();
        if s.budget() < 16 {
            return Err(BatchError::Config(format!(
                "a context of {} tokens leaves no room for documents: the instruction takes {} and \
                 the summary {}; raise --max-context or lower --max-tokens",
                s.context, s.overhead, s.max_tokens
            )));
        }
        Ok(s)
    }

    /// Document tokens one prompt can hold.
    fn budget(&self) -> usize {
        self.context
            .saturating_sub(self.max_tokens + self.overhead + MARGIN)
    }

    /// The prompt of `text`: the chat template around the instruction when the model has one.
    fn prompt_ids(&self, text: &str) -> Result<Vec<u32>, String> {
        let content = self.template.replace("{text}", text);
        let message = ChatMessage {
            role: "user".into(),
            content: content.clone(),
        };
        let rendered = self
            .tokenizer
            .render_chat(&[message], true)
            .unwrap_or(content);
        self.tokenizer.encode(&rendered).map_err(|e| e.to_string())
    }

    fn count(&self, text: &str) -> usize {
        self.tokenizer
            .encode(text)
            .map_or(usize::MAX, |ids| ids.len())
    }

    /// Summarizes `text` according to the overflow policy.
    pub async fn summarize(&self, text: &str) -> Result<Summary, String> {
        let mut total = Summary::default();
        let mut text = text.to_string();
        for round in 0..=MAX_ROUNDS {
            let ids = self.prompt_ids(&text)?;
            if ids.len() + self.max_tokens <= self.context {
                let (summary, prompt, completion) = self.generate(ids).await?;
                add(&mut total, prompt, completion);
                total.text = summary;
                return Ok(total);
            }
            match self.policy {
                OverflowPolicy::Error => {
                    return Err(format!(
                    "the document needs {} prompt tokens but the context ({}) leaves room for {} \
                         with a {}-token summary (--on-overflow error)",
                    ids.len(),
                    self.context,
                    self.context.saturating_sub(self.max_tokens),
                    self.max_tokens
                ))
                }
                OverflowPolicy::Truncate => {
                    let kept = self.truncate(&text)?;
                    let ids = self.prompt_ids(&kept)?;
                    let (summary, prompt, completion) = self.generate(ids).await?;
                    add(&mut total, prompt, completion);
                    total.text = summary;
                    return Ok(total);
                }
                OverflowPolicy::MapReduce => {}
            }
            let before = self.count(&text);
            let chunks = split_to_fit(&text, self.budget(), &mut |s| self.count(s));
            if chunks.len() <= 1 {
                // Fits by count but not in the rendered prompt: cut the seam difference.
                text = self.truncate(&text)?;
                continue;
            }
            let mut summaries = Vec::with_capacity(chunks.len());
            for chunk in &chunks {
                let ids = self.prompt_ids(chunk)?;
                let (summary, prompt, completion) = self.generate(ids).await?;
                add(&mut total, prompt, completion);
                summaries.push(summary.trim().to_string());
            }
            text = summaries.join("\n\n");
            tracing::debug!(round, chunks = chunks.len(), "map-reduce round");
            if self.count(&text) >= before {
                return Err(format!(
                    "map-reduce does not converge: {} chunk summaries are as long as the text \
                     ({before} tokens); lower --max-tokens or raise --max-context",
                    chunks.len()
                ));
            }
        }
        Err(format!(
            "the document still does not fit after {MAX_ROUNDS} map-reduce rounds"
        ))
    }

    /// The first tokens of `text` that fit one prompt, as text.
    fn truncate(&self, text: &str) -> Result<String, String> {
        let ids = self.tokenizer.encode(text).map_err(|e| e.to_string())?;
        let keep = ids.len().min(self.budget());
        self.tokenizer
            .decode(&ids[..keep], false)
            .map_err(|e| e.to_string())
    }

    /// Runs one greedy request; returns its text and token counts.
    async fn generate(&self, prompt: Vec<u32>) -> Result<(String, usize, usize), String> {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens: self.max_tokens,
            ..SamplingParams::default()
        };
        let mut submission = self
            .engine
            .submit(Request { prompt, params })
            .await
            .map_err(|e| format!("the engine refused the request: {e}"))?;
        let mut text = String::new();
        while let Some(event) = submission.events.recv().await {
            match event {
                Event::Token { text: t, .. } => text.push_str(&t),
                Event::PromptLogprobs(_) => {}
                Event::Finished {
                    reason: FinishReason::Stop | FinishReason::Length,
                    usage,
                    ..
                } => return Ok((text, usage.prompt_tokens, usage.completion_tokens)),
                Event::Finished { reason, error, .. } => {
                    return Err(format!(
                        "the request ended with {reason:?}: {}",
                        error.unwrap_or_default()
                    ))
                }
            }
        }
        Err("the engine stopped before the request finished".into())
    }
}

fn add(total: &mut Summary, prompt: usize, completion: usize) {
    total.prompt_tokens += prompt;
    total.completion_tokens += completion;
    total.requests += 1;
}
