//! Llama hyper-parameters read from GGUF metadata, written as Hugging Face `config.json`.

use serde::Serialize;

use crate::error::ConvertError;
use crate::gguf::Metadata;

/// The hyper-parameters of a Llama model, in Hugging Face's `config.json` vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlamaConfig {
    /// Always `["LlamaForCausalLM"]`.
    pub architectures: Vec<String>,
    /// Always `"llama"`.
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (fewer than query heads under grouped-query attention).
    pub num_key_value_heads: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// Rotary embedding base.
    pub rope_theta: f64,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Rows of the embedding matrix.
    pub vocab_size: usize,
    /// True when the output projection reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Always `"silu"`.
    pub hidden_act: String,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<usize>,
    /// End-of-sequence token id.
    pub eos_token_id: Option<usize>,
    /// Always `"float32"`: the converter writes f32 tensors.
    pub torch_dtype: String,
}

impl LlamaConfig {
    /// Reads the `llama.*` keys. `vocab_size` is the number of tokenizer tokens, used when
    /// `llama.vocab_size` is absent; `has_output` says whether `output.weight` exists.
    pub fn from_gguf_metadata(
        meta: &Metadata,
        vocab_size: usize,
        has_output: bool,
        bos_token_id: Option<usize>,
        eos_token_id: Option<usize>,
    ) -> Result<Self, ConvertError> {
        let arch = meta.str("general.architecture")?;
        if arch != "llama" {
            return Err(ConvertError::UnsupportedArchitecture(arch.to_owned()));
        }
        if let Some(scaling) = meta.opt_str("llama.rope.scaling.type")? {
            if scaling != "none" {
                return Err(ConvertError::MetadataValue {
                    key: "llama.rope.scaling.type".into(),
                    reason: format!("rope scaling `{scaling}` is not supported"),
                });
            }
        }
        let hidden_size = meta.usize("llama.embedding_length")?;
        let num_attention_heads = meta.usize("llama.attention.head_count")?;
        let num_key_value_heads = meta
            .opt_usize("llama.attention.head_count_kv")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0
            || num_key_value_heads == 0
            || num_attention_heads % num_key_value_heads != 0
        {
            return Err(ConvertError::MetadataValue {
                key: "llama.attention.head_count_kv".into(),
                reason: format!("{num_key_value_heads} key/value heads do not divide {num_attention_heads} heads"),
            });
        }
        let head_dim = meta
            .opt_usize("llama.attention.key_length")?
            .unwrap_or(hidden_size / num_attention_heads);
        if let Some(rot) = meta.opt_u64("llama.rope.dimension_count")? {
            if rot != head_dim as u64 {
                return Err(ConvertError::MetadataValue {
                    key: "llama.rope.dimension_count".into(),
                    reason: format!("partial rotary ({rot} of {head_dim} dims) is not supported"),
                });
            }
        }
        let vocab_size = meta.opt_usize("llama.vocab_size")?.unwrap_or(vocab_size);
        // llama.cpp's default when the key is absent.
        let rope_theta = meta.opt_f64("llama.rope.freq_base")?.unwrap_or(10_000.0);
        Ok(LlamaConfig {
            architectures: vec!["LlamaForCausalLM".into()],
            model_type: "llama".into(),
            hidden_size,
            intermediate_size: meta.usize("llama.feed_forward_length")?,
            num_attention_heads,
            num_key_value_heads,
            num_hidden_layers: meta.usize("llama.block_count")?,
            rms_norm_eps: meta.f64("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta,
            max_position_embeddings: meta.usize("llama.context_length")?,
            vocab_size,
            tie_word_embeddings: !has_output,
            head_dim,
            hidden_act: "silu".into(),
            bos_token_id,
            eos_token_id,
            torch_dtype: "float32".into(),
        })
    }

    /// The `generation_config.json` document.
    pub(crate) fn generation_config_json(&self) -> serde_json::Value {
        serde_json::json!({ "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id })
    }
}
