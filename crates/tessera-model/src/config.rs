//! `config.json` of a Hugging Face Llama-family model, checked and reduced to what Tessera uses.

use std::path::Path;

use serde::Deserialize;
use tessera_plan::ModelShape;

use crate::error::ModelError;

/// The model families Tessera runs (all share the Llama block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM2).
    Llama,
    /// `MistralForCausalLM` (sliding-window attention).
    Mistral,
    /// `Qwen2ForCausalLM` (q/k/v biases).
    Qwen2,
}

/// Rotary embedding frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// Plain `1 / theta^(2i/d)` frequencies.
    None,
    /// Llama 3's piecewise scaling of low frequencies.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f32,
        /// Wavelength threshold (as a fraction of the original context) for "low".
        low_freq_factor: f32,
        /// Wavelength threshold for "high".
        high_freq_factor: f32,
        /// Context length the model was trained with before scaling.
        original_max_position_embeddings: usize,
    },
}

/// Everything Tessera needs from `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Model family.
    pub architecture: Architecture,
    /// Sharding-relevant shape.
    pub shape: ModelShape,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// Longest sequence the model accepts.
    pub max_position_embeddings: usize,
    /// Sliding attention window (Mistral), if any.
    pub sliding_window: Option<usize>,
    /// End-of-sequence token ids from the config.
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    num_hidden_layers: usize,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    rope_parameters: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    vocab_size: usize,
    tie_word_embeddings: Option<bool>,
    head_dim: Option<usize>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    hidden_act: Option<String>,
    eos_token_id: Option<serde_json::Value>,
}

impl ModelConfig {
    /// Reads and checks `dir/config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let mut config = Self::parse(&text, &path)?;
        // generation_config.json may name further end-of-sequence ids (Llama 3 lists several).
        let gen_path = dir.join("generation_config.json");
        if let Ok(gen_text) = std::fs::read_to_string(&gen_path) {
            let gen: serde_json::Value =
                serde_json::from_str(&gen_text).map_err(|e| ModelError::Config {
                    path: gen_path.clone(),
                    reason: e.to_string(),
                })?;
            for id in eos_ids(gen.get("eos_token_id")) {
                if !config.eos_token_ids.contains(&id) {
                    config.eos_token_ids.push(id);
                }
            }
        }
        Ok(config)
    }

    /// Parses the text of a `config.json` (`path` is only used in messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let architecture = architecture_of(&raw, path)?;
        check_supported(&raw, architecture).map_err(bad)?;
        let heads = raw.num_attention_heads;
        let kv_heads = raw.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(format!(
                "num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = raw.head_dim.unwrap_or(raw.hidden_size / heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head_dim {head_dim} must be even and non-zero"
            )));
        }
        if raw.hidden_size == 0 || raw.num_hidden_layers == 0 || raw.vocab_size == 0 {
            return Err(bad(
                "hidden_size, num_hidden_layers and vocab_size must be non-zero".into(),
            ));
        }
        // transformers 5 may move rope settings into `rope_parameters`.
        let rope_params = raw.rope_parameters.as_ref();
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|p| p.get("rope_theta"))
                    .and_then(|v| v.as_f64())
            })
            .unwrap_or(10_000.0) as f32;
        let scaling = raw.rope_scaling.as_ref().or(rope_params);
        let rope_scaling = parse_rope_scaling(scaling).map_err(bad)?;
        let sliding_window = match architecture {
            Architecture::Mistral => raw.sliding_window,
            Architecture::Qwen2 if raw.use_sliding_window == Some(true) => raw.sliding_window,
            _ => None,
        };
        let eos_token_ids = eos_ids(raw.eos_token_id.as_ref());
        Ok(Self {
            architecture,
            shape: ModelShape {
                hidden: raw.hidden_size,
                layers: raw.num_hidden_layers,
                heads,
                kv_heads,
                head_dim,
                intermediate: raw.intermediate_size,
                vocab: raw.vocab_size,
                tied_embeddings: raw.tie_word_embeddings.unwrap_or(false),
                qkv_bias: architecture == Architecture::Qwen2,
            },
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            sliding_window,
            eos_token_ids,
        })
    }

    /// RoPE inverse frequencies (length `head_dim / 2`), scaled as the config says, in f32
    /// like Hugging Face computes them.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.shape.head_dim;
        let base: Vec<f32> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / d as f32))
            .collect();
        match &self.rope_scaling {
            RopeScaling::None => base,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
                        if medium {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
        }
    }
}

/// End-of-sequence ids from a JSON number or list of numbers.
fn eos_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|v| vec![v as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_rope_scaling(v: Option<&serde_json::Value>) -> Result<RopeScaling, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(RopeScaling::None);
    };
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64, String> {
        v.get(key)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("rope_scaling of type {kind} needs a number '{key}'"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")? as f32,
            low_freq_factor: num("low_freq_factor")? as f32,
            high_freq_factor: num("high_freq_factor")? as f32,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        other => Err(format!(
            "rope_scaling type '{other}' is not supported (default, llama3)"
        )),
    }
}

/// The architecture `config.json` names (`architectures[0]`, else `model_type`).
fn architecture_of(raw: &RawConfig, path: &Path) -> Result<Architecture, ModelError> {
    let name = raw
        .architectures
        .as_ref()
        .and_then(|a| a.first().cloned())
        .or(raw.model_type.clone())
        .unwrap_or_default();
    match name.as_str() {
        "LlamaForCausalLM" | "llama" => Ok(Architecture::Llama),
        "MistralForCausalLM" | "mistral" => Ok(Architecture::Mistral),
        "Qwen2ForCausalLM" | "qwen2" => Ok(Architecture::Qwen2),
        other => Err(ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            arch: other.to_string(),
        }),
    }
}

/// Refuses the options of the config that the forward pass does not implement.
fn check_supported(raw: &RawConfig, architecture: Architecture) -> Result<(), String> {
    if let Some(act) = &raw.hidden_act {
        if act != "silu" {
            return Err(format!("hidden_act '{act}' is not supported (silu only)"));
        }
    }
    if raw.mlp_bias == Some(true) {
        return Err("mlp_bias=true (biases on MLP projections) is not supported".into());
    }
    if architecture == Architecture::Llama && raw.attention_bias == Some(true) {
        return Err(
            "attention_bias=true (biases on all attention projections) is not supported".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":576,"intermediate_size":1536,
        "num_attention_heads":9,"num_key_value_heads":3,"num_hidden_layers":30,"rms_norm_eps":1e-5,
        "rope_theta":100000.0,"max_position_embeddings":8192,"vocab_size":49152,"tie_word_embeddings":true,
        "eos_token_id":2}"#;

    #[test]
    fn parses_smollm2_shape() {
        let c = ModelConfig::parse(SMOL, Path::new("config.json")).unwrap();
        assert_eq!(c.shape, ModelShape::smollm2_135m());
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.architecture, Architecture::Llama);
    }

    #[test]
    fn unknown_architecture_is_a_clear_error() {
        let text = SMOL.replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
        let err = ModelConfig::parse(&text, Path::new("x/config.json")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("GPTNeoXForCausalLM") && msg.contains("not supported"),
            "{msg}"
        );
    }

    #[test]
    fn heads_that_do_not_group_are_rejected() {
        let text = SMOL.replace("\"num_key_value_heads\":3", "\"num_key_value_heads\":4");
        assert!(ModelConfig::parse(&text, Path::new("config.json")).is_err());
    }

    #[test]
    fn llama3_scaling_divides_low_frequencies_only() {
        let text = SMOL.replace(
            "\"max_position_embeddings\":8192",
            "\"max_position_embeddings\":8192,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0,\
             \"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":1024}",
        );
        let c = ModelConfig::parse(&text, Path::new("config.json")).unwrap();
        let mut plain = c.clone();
        plain.rope_scaling = RopeScaling::None;
        let (s, p) = (c.rope_inv_freq(), plain.rope_inv_freq());
        assert_eq!(s[0], p[0], "the highest frequency is unchanged");
        let last = s.len() - 1;
        assert!(
            (s[last] - p[last] / 8.0).abs() <= p[last] * 1e-6,
            "the lowest is divided by the factor"
        );
    }
}
