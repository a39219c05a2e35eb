//! Hugging Face `tokenizer.json` and `tokenizer_config.json` from a GGUF byte-level BPE vocabulary.
//!
//! GGUF keeps the vocabulary already in GPT-2's byte-to-unicode alphabet (`Ġ` for a space),
//! so tokens and merges carry over unchanged; only llama.cpp's pre-tokenizer (named by
//! `tokenizer.ggml.pre`) has to be translated into Hugging Face pre-tokenizer steps.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::ConvertError;
use crate::gguf::Metadata;

/// llama.cpp token types that Hugging Face treats as added special tokens.
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The pre-tokenizers of llama.cpp this converter can express exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizer {
    /// `smollm`: every `\p{N}` character on its own, then the GPT-2 regex.
    DigitsThenGpt2,
    /// `gpt2`: the GPT-2 regex alone.
    Gpt2,
}

impl PreTokenizer {
    fn from_gguf(name: Option<&str>) -> Result<Self, ConvertError> {
        match name {
            Some("smollm") => Ok(PreTokenizer::DigitsThenGpt2),
            Some("gpt2") => Ok(PreTokenizer::Gpt2),
            // llama.cpp's "default" (also used when the key is missing) is not GPT-2: it
            // splits punctuation runs first and digits in groups of three afterwards.
            Some("default") | None => Err(ConvertError::UnsupportedTokenizer(
                "pre-tokenizer `default` (llama.cpp's fallback with punctuation and \
                 three-digit splits) is not supported; supported: smollm, gpt2"
                    .into(),
            )),
            Some(other) => Err(ConvertError::UnsupportedTokenizer(format!(
                "pre-tokenizer `{other}` is not supported; supported: smollm, gpt2"
            ))),
        }
    }

    fn to_json(self) -> Value {
        let byte_level = json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
        });
        match self {
            PreTokenizer::DigitsThenGpt2 => json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level],
            }),
            PreTokenizer::Gpt2 => byte_level,
        }
    }
}

/// The tokenizer part of a GGUF file's metadata, borrowed from it.
#[derive(Debug)]
pub(crate) struct GgufVocab<'a> {
    tokens: Vec<&'a str>,
    token_types: Vec<i64>,
    merges: Vec<(&'a str, &'a str)>,
    pre: PreTokenizer,
    bos: Option<usize>,
    eos: Option<usize>,
    unk: Option<usize>,
    pad: Option<usize>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<&'a str>,
}

impl<'a> GgufVocab<'a> {
    /// Reads and checks the `tokenizer.ggml.*` keys.
    pub(crate) fn from_metadata(meta: &'a Metadata) -> Result<Self, ConvertError> {
        let model = meta.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ConvertError::UnsupportedTokenizer(format!(
                "tokenizer model `{model}` is not supported; only byte-level BPE (`gpt2`) is"
            )));
        }
        let pre = PreTokenizer::from_gguf(meta.opt_str("tokenizer.ggml.pre")?)?;
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let token_types = meta
            .opt_i64s("tokenizer.ggml.token_type")?
            .unwrap_or_default();
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(ConvertError::MetadataValue {
                key: "tokenizer.ggml.token_type".into(),
                reason: format!("{} entries for {} tokens", token_types.len(), tokens.len()),
            });
        }
        let merges = meta
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(split_merge)
            .collect::<Result<Vec<_>, _>>()?;
        let token_id = |key: &str| -> Result<Option<usize>, ConvertError> {
            match meta.opt_u64(key)? {
                None => Ok(None),
                Some(id) if id < tokens.len() as u64 => Ok(Some(id as usize)),
                Some(id) => Err(ConvertError::MetadataValue {
                    key: key.into(),
                    reason: format!(
                        "token id {id} is outside the vocabulary of {}",
                        tokens.len()
                    ),
                }),
            }
        };
        Ok(GgufVocab {
            bos: token_id("tokenizer.ggml.bos_token_id")?,
            eos: token_id("tokenizer.ggml.eos_token_id")?,
            unk: token_id("tokenizer.ggml.unknown_token_id")?,
            pad: token_id("tokenizer.ggml.padding_token_id")?,
            add_bos: meta
                .opt_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(false),
            add_eos: meta
                .opt_bool("tokenizer.ggml.add_eos_token")?
                .unwrap_or(false),
            chat_template: meta.opt_str("tokenizer.chat_template")?,
            tokens,
            token_types,
            merges,
            pre,
        })
    }

    /// Number of tokens in the vocabulary.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Beginning-of-sequence token id.
    pub(crate) fn bos(&self) -> Option<usize> {
        self.bos
    }

    /// End-of-sequence token id.
    pub(crate) fn eos(&self) -> Option<usize> {
        self.eos
    }

    /// The `tokenizer.json` document.
    pub(crate) fn tokenizer_json(&self) -> Result<String, serde_json::Error> {
        if self.add_bos || self.add_eos {
            tracing::warn!(
                add_bos = self.add_bos,
                add_eos = self.add_eos,
                "GGUF asks for BOS/EOS to be added; tokenizer.json does not add them, callers must"
            );
        }
        let added_tokens: Vec<Value> = self
            .token_types
            .iter()
            .enumerate()
            .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
            .map(|(id, _)| {
                json!({
                    "id": id, "content": self.tokens[id], "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true,
                })
            })
            .collect();
        let document = TokenizerJson {
            version: "1.0",
            truncation: None,
            padding: None,
            added_tokens,
            normalizer: None,
            pre_tokenizer: self.pre.to_json(),
            post_processor: json!({
                "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true
            }),
            decoder: json!({
                "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
            }),
            model: BpeModel {
                kind: "BPE",
                dropout: None,
                unk_token: None,
                continuing_subword_prefix: None,
                end_of_word_suffix: None,
                fuse_unk: false,
                byte_fallback: false,
                ignore_merges: false,
                vocab: VocabInIdOrder(&self.tokens),
                merges: &self.merges,
            },
        };
        serde_json::to_string(&document)
    }

    /// The `tokenizer_config.json` document; `model_max_length` is the context length.
    pub(crate) fn tokenizer_config_json(
        &self,
        model_max_length: usize,
    ) -> Result<String, serde_json::Error> {
        let name = |id: Option<usize>| id.map(|id| self.tokens[id]);
        let config = TokenizerConfig {
            tokenizer_class: "PreTrainedTokenizerFast",
            bos_token: name(self.bos),
            eos_token: name(self.eos),
            pad_token: name(self.pad),
            unk_token: name(self.unk),
            add_bos_token: self.add_bos,
            add_eos_token: self.add_eos,
            clean_up_tokenization_spaces: false,
            model_max_length,
            chat_template: self.chat_template,
        };
        serde_json::to_string_pretty(&config)
    }
}

/// Splits a GGUF merge rule "left right" the way llama.cpp does: at the first space that
/// is not the first character.
fn split_merge(rule: &str) -> Result<(&str, &str), ConvertError> {
    rule.char_indices()
        .skip(1)
        .find(|&(_, c)| c == ' ')
        .map(|(at, _)| (&rule[..at], &rule[at + 1..]))
        .ok_or_else(|| ConvertError::MetadataValue {
            key: "tokenizer.ggml.merges".into(),
            reason: format!("merge rule {rule:?} has no separating space"),
        })
}

#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<Value>,
    normalizer: Option<()>,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    model: BpeModel<'a>,
}

#[derive(Serialize)]
struct BpeModel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<f32>,
    unk_token: Option<&'a str>,
    continuing_subword_prefix: Option<&'a str>,
    end_of_word_suffix: Option<&'a str>,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: VocabInIdOrder<'a>,
    merges: &'a [(&'a str, &'a str)],
}

/// Serializes the vocabulary as a `{token: id}` map in id order, as Hugging Face writes it.
struct VocabInIdOrder<'a>(&'a [&'a str]);

impl Serialize for VocabInIdOrder<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (id, token) in self.0.iter().enumerate() {
            map.serialize_entry(token, &id)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct TokenizerConfig<'a> {
    tokenizer_class: &'static str,
    bos_token: Option<&'a str>,
    eos_token: Option<&'a str>,
    pad_token: Option<&'a str>,
    unk_token: Option<&'a str>,
    add_bos_token: bool,
    add_eos_token: bool,
    clean_up_tokenization_spaces: bool,
    model_max_length: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_template: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::MetadataValue;

    fn strings(items: &[&str]) -> MetadataValue {
        MetadataValue::Array(
            items
                .iter()
                .map(|s| MetadataValue::String(s.to_string()))
                .collect(),
        )
    }

    /// A five-token vocabulary: control token 0, bytes "a", "b", "Ġ" and merged "ab".
    fn tiny_metadata(pre: Option<&str>) -> Metadata {
        let mut values = vec![
            ("tokenizer.ggml.model", MetadataValue::String("gpt2".into())),
            (
                "tokenizer.ggml.tokens",
                strings(&["<|end|>", "a", "b", "Ġ", "ab"]),
            ),
            ("tokenizer.ggml.merges", strings(&["a b"])),
            (
                "tokenizer.ggml.token_type",
                MetadataValue::Array(
                    [3, 1, 1, 1, 1]
                        .into_iter()
                        .map(MetadataValue::I32)
                        .collect(),
                ),
            ),
            ("tokenizer.ggml.eos_token_id", MetadataValue::U32(0)),
        ];
        if let Some(pre) = pre {
            values.push(("tokenizer.ggml.pre", MetadataValue::String(pre.into())));
        }
        Metadata::new(
            values
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    #[test]
    fn tokenizer_json_lists_control_tokens_vocab_in_id_order_and_merge_pairs() {
        let meta = tiny_metadata(Some("smollm"));
        let vocab = GgufVocab::from_metadata(&meta).unwrap();
        let text = vocab.tokenizer_json().unwrap();
        assert!(
            text.contains(r#""vocab":{"<|end|>":0,"a":1,"b":2,"Ġ":3,"ab":4}"#),
            "{text}"
        );
        let doc: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["model"]["merges"], json!([["a", "b"]]));
        assert_eq!(doc["added_tokens"][0]["content"], "<|end|>");
        assert_eq!(doc["added_tokens"].as_array().unwrap().len(), 1);
        assert_eq!(doc["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
    }

    #[test]
    fn gpt2_pre_tokenizer_is_plain_byte_level_and_unknown_ones_are_named() {
        let meta = tiny_metadata(Some("gpt2"));
        let doc: Value = serde_json::from_str(
            &GgufVocab::from_metadata(&meta)
                .unwrap()
                .tokenizer_json()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(doc["pre_tokenizer"]["type"], "ByteLevel");

        for pre in [Some("llama3"), Some("default"), None] {
            let meta = tiny_metadata(pre);
            let err = GgufVocab::from_metadata(&meta).unwrap_err().to_string();
            assert!(err.contains(pre.unwrap_or("default")), "{err}");
        }
    }

    #[test]
    fn merges_split_at_first_space_after_the_first_character() {
        assert_eq!(split_merge("Ġ t").unwrap(), ("Ġ", "t"));
        assert_eq!(split_merge("  x").unwrap(), (" ", "x"));
        assert!(split_merge("abc").is_err());
    }

    #[test]
    fn tokenizer_config_names_special_tokens_by_content() {
        let meta = tiny_metadata(Some("smollm"));
        let config: Value = serde_json::from_str(
            &GgufVocab::from_metadata(&meta)
                .unwrap()
                .tokenizer_config_json(128)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(config["eos_token"], "<|end|>");
        assert_eq!(config["bos_token"], Value::Null);
        assert_eq!(config["model_max_length"], 128);
        assert_eq!(config["add_bos_token"], false);
    }
}
