//! Constrained decoding: a grammar (JSON schema, regular expression, list of choices or
//! Lark grammar) compiled by `llguidance` into one matcher per sequence, which masks the
//! logits before sampling and follows each sampled token.
//!
//! One [`ConstraintCompiler`] is built per served model from its `tokenizer.json` (the
//! bytes of every token, as a token trie); it compiles a request's [`Grammar`] into a
//! [`TokenConstraint`], cloned once per choice so that each choice has its own matcher.
//! The engine computes the next masks on a helper thread while the forward pass runs
//! ([`masks_beside`]) and joins before sampling, so a mask costs the step nothing unless
//! it takes longer than the forward.

use std::fmt;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

/// What a constrained request's output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// A JSON value valid under this JSON schema (`{"type":"object"}` for any object).
    JsonSchema(Value),
    /// Text matching this regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark syntax (may embed `%json{...}` schemas).
    Lark(String),
}

/// Why a constraint could not be built or followed.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    /// The tokenizer's vocabulary could not be turned into a token trie.
    #[error("the tokenizer cannot be used for constrained decoding: {0}")]
    Tokenizer(String),
    /// The grammar, schema or regular expression is invalid or unsupported.
    #[error("invalid grammar: {0}")]
    Grammar(String),
    /// The matcher rejected a token or failed while computing a mask.
    #[error("constrained decoding failed: {0}")]
    Matcher(String),
}

/// Compiles grammars against one model's vocabulary (built once, shared by requests).
pub struct ConstraintCompiler {
    factory: ParserFactory,
}

impl fmt::Debug for ConstraintCompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConstraintCompiler").finish_non_exhaustive()
    }
}

impl ConstraintCompiler {
    /// A compiler over the vocabulary of `tokenizer_json` (the text of a Hugging Face
    /// `tokenizer.json`), padded to `vocab` logits; `eos` ends a finished grammar.
    pub fn new(tokenizer_json: &str, vocab: usize, eos: &[u32]) -> Result<Self, ConstraintError> {
        let bad = |e: String| ConstraintError::Tokenizer(e);
        let json: Value = serde_json::from_str(tokenizer_json).map_err(|e| bad(e.to_string()))?;
        // The reader asserts on some malformed vocabularies: a panic is a refusal, not a crash.
        let mut words =
            std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
                .map_err(|_| bad("unreadable vocabulary".into()))?
                .map_err(|e| bad(e.to_string()))?;
        if words.len() > vocab {
            return Err(bad(format!(
                "the tokenizer has {} tokens but the model only {vocab} logits",
                words.len()
            )));
        }
        words.resize(vocab, Vec::new());
        let first_eos = *eos
            .first()
            .ok_or_else(|| bad("the model has no end-of-sequence token".into()))?;
        let mut trie = TokTrie::from(&TokRxInfo::new(vocab as u32, first_eos), &words);
        trie = trie.with_eos_tokens(eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| bad(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// The matcher for `grammar`, ready for the first generated token.
    pub fn compile(&self, grammar: &Grammar) -> Result<TokenConstraint, ConstraintError> {
        let top = match grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_layout(schema)),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Grammar::Choice(choices) => TopLevelGrammar::from_lark(choice_lark(choices)?),
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        };
        let parser = self
            .factory
            .create_parser(top)
            .map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Grammar(e));
        }
        Ok(TokenConstraint {
            matcher,
            mask: None,
        })
    }
}

/// `schema` with llguidance's JSON layout fixed to `json.dumps`'s (`", "` and `": "`,
/// no other whitespace) unless the schema sets its own `x-guidance` options: free
/// whitespace would let a sampled model pad the output without end.
pub fn with_layout(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// A Lark grammar accepting exactly one of `choices`.
fn choice_lark(choices: &[String]) -> Result<String, ConstraintError> {
    if choices.is_empty() {
        return Err(ConstraintError::Grammar(
            "the list of choices is empty".into(),
        ));
    }
    let alternatives: Vec<String> = choices
        .iter()
        .map(|c| serde_json::to_string(c).unwrap_or_default())
        .collect();
    Ok(format!("start: {}\n", alternatives.join(" | ")))
}

/// One sequence's matcher: the mask of the next token and the state after each token.
pub struct TokenConstraint {
    matcher: Matcher,
    /// The mask for the next token, computed ahead (beside the forward pass).
    mask: Option<SimpleVob>,
}

impl Clone for TokenConstraint {
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
            mask: self.mask.clone(),
        }
    }
}

impl fmt::Debug for TokenConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConstraint")
            .field("mask_ready", &self.mask.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenConstraint {
    /// Computes the mask of the next token unless it is ready.
    pub fn prepare(&mut self) {
        if self.mask.is_none() {
            // An error leaves the mask empty; `masked` reports it.
            self.mask = self.matcher.compute_mask().ok();
        }
    }

    /// Whether token `id` may come next (computes the mask if needed).
    pub fn allows(&mut self, id: u32) -> bool {
        self.prepare();
        self.mask.as_ref().is_some_and(|m| m.is_allowed(id))
    }

    /// `logits` with every token the grammar forbids next set to minus infinity.
    pub fn masked(&mut self, logits: &[f32]) -> Result<Vec<f32>, ConstraintError> {
        self.prepare();
        let mask = self.mask.as_ref().ok_or_else(|| self.error())?;
        let mut out = logits.to_vec();
        apply_mask(mask, &mut out);
        Ok(out)
    }

    /// Follows the sampled `token`; `true` when the grammar is complete and nothing more
    /// may follow (the sequence should stop).
    pub fn accept(&mut self, token: u32) -> Result<bool, ConstraintError> {
        self.mask = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| ConstraintError::Matcher(e.to_string()))?;
        Ok(self.matcher.is_stopped())
    }

    /// Whether the text so far is a complete match (end-of-sequence allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    fn error(&self) -> ConstraintError {
        ConstraintError::Matcher(
            self.matcher
                .get_error()
                .unwrap_or_else(|| "no token is allowed".into()),
        )
    }
}

/// Sets the logits of the tokens `mask` forbids to minus infinity, 32 tokens a word.
fn apply_mask(mask: &SimpleVob, logits: &mut [f32]) {
    for (w, chunk) in logits.chunks_mut(32).enumerate() {
        let word = mask.as_slice().get(w).copied().unwrap_or(0);
        if word == u32::MAX {
            continue;
        }
        for (bit, l) in chunk.iter_mut().enumerate() {
            if word & (1 << bit) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// Runs `forward` on this thread while the masks of `constraints` are computed on another,
/// and returns once both are done.
pub(crate) fn masks_beside<T>(
    constraints: Vec<&mut TokenConstraint>,
    forward: impl FnOnce() -> T,
) -> T {
    if constraints.is_empty() {
        return forward();
    }
    std::thread::scope(|scope| {
        let masks = scope.spawn(move || {
            for c in constraints {
                c.prepare();
            }
        });
        let out = forward();
        // A panic while masking leaves masks unset; `masked` then computes or reports them.
        let _ = masks.join();
        out
    })
}

#[cfg(test)]
#[path = "constraint_tests.rs"]
mod tests;
