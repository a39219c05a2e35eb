//! Text in and out: the model's `tokenizer.json` and its Jinja chat template.

use std::path::Path;

use serde::Serialize;

use crate::error::ModelError;

/// One chat message (`role` is system, user or assistant).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: String,
    /// What is said.
    pub content: String,
}

/// The tokenizer and chat template of one model directory.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    add_bos: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and (if present) `tokenizer_config.json` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = if cfg_path.exists() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", cfg_path.display())))?
        } else {
            serde_json::Value::Null
        };
        let token_str = |key: &str| -> Option<String> {
            match cfg.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v) => v
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                None => None,
            }
        };
        let bos_token = token_str("bos_token");
        let eos_token = token_str("eos_token");
        let mut eos_ids: Vec<u32> = eos_token
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .collect();
        for extra in ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"] {
            if eos_ids.is_empty() {
                if let Some(id) = inner.token_to_id(extra) {
                    eos_ids.push(id);
                }
            }
        }
        Ok(Self {
            inner,
            chat_template: cfg
                .get("chat_template")
                .and_then(|t| t.as_str())
                .map(str::to_string),
            add_bos: cfg
                .get("add_bos_token")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
            bos_token,
            eos_token,
            eos_ids,
        })
    }

    /// Token ids of `text`; special tokens written in the text are parsed as such, and a
    /// BOS is prepended only when the tokenizer config asks for one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            if let Some(bos) = self
                .bos_token
                .as_deref()
                .and_then(|t| self.inner.token_to_id(t))
            {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (special tokens skipped when `skip_special`).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Ids that end generation (the EOS token of the tokenizer config).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The tokenizer as `tokenizer.json` text (for token tables built elsewhere, such as
    /// constrained decoding's token trie).
    pub fn to_json(&self) -> Result<String, ModelError> {
        self.inner
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Whether the chat template reads a `tools` variable (renders tool specs itself).
    pub fn template_uses_tools(&self) -> bool {
        self.chat_template
            .as_deref()
            .is_some_and(|t| t.contains("tools"))
    }

    /// Renders `messages` with the model's chat template (generation prompt appended when asked).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        self.render_chat_json(
            &serde_json::to_value(messages).map_err(|e| ModelError::ChatTemplate(e.to_string()))?,
            None,
            add_generation_prompt,
        )
    }

    /// Renders messages given as JSON (any fields, such as `tool_calls`) with the chat
    /// template, passing `tools` to templates that render tool specs.
    pub fn render_chat_json(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::ChatTemplate(
                "the model has no chat_template in tokenizer_config.json".into(),
            )
        })?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }
}
