//! Tiny random-weight models written to disk, for fast tests and GPU checks.
//!
//! The model is an ordinary Hugging Face directory (`config.json` + `model.safetensors`),
//! so it goes through the same loader as a real checkpoint.

use std::collections::HashMap;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use tessera_plan::{ModelShape, WeightKind};

use crate::error::ModelError;

/// Writes a random Llama-family model of `shape` into `dir` (created if needed).
///
/// Weights are uniform in ±`1/sqrt(fan_in)`·2 so activations stay O(1) through the layers;
/// norms are near 1. The same `seed` always writes the same bytes.
pub fn write_random_model(
    dir: &Path,
    shape: &ModelShape,
    seed: u64,
    max_positions: usize,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors = random_tensors(shape, seed);
    write_safetensors(&dir.join("model.safetensors"), tensors)?;
    write_config(&dir.join("config.json"), shape, max_positions)
}

/// A tensor to write: Hugging Face name, dimensions and values.
type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Every weight of `shape` in file order, drawn from a generator seeded with `seed`.
fn random_tensors(shape: &ModelShape, seed: u64) -> Vec<NamedTensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = Vec::new();
    let mut push = |kind: WeightKind, layer: usize, full: [usize; 2], rng: &mut ChaCha8Rng| {
        let is_norm = matches!(
            kind,
            WeightKind::InputNorm | WeightKind::PostAttentionNorm | WeightKind::FinalNorm
        );
        tensors.push(random_tensor(kind.hf_name(layer), full, is_norm, rng));
    };
    push(
        WeightKind::Embedding,
        0,
        WeightKind::Embedding.full_shape(shape),
        &mut rng,
    );
    for l in 0..shape.layers {
        for kind in WeightKind::LAYER {
            if kind.is_bias() && !shape.qkv_bias {
                continue;
            }
            let mut full = kind.full_shape(shape);
            if kind.is_bias() {
                full = [full[0], 1];
            }
            push(kind, l, full, &mut rng);
        }
    }
    push(
        WeightKind::FinalNorm,
        0,
        WeightKind::FinalNorm.full_shape(shape),
        &mut rng,
    );
    if !shape.tied_embeddings {
        push(
            WeightKind::LmHead,
            0,
            WeightKind::LmHead.full_shape(shape),
            &mut rng,
        );
    }
    tensors
}

/// One random tensor of `full` (`[n, 1]` is written as a vector): norms near 1, other
/// weights uniform in ±`2/sqrt(fan_in)`.
fn random_tensor(
    name: String,
    full: [usize; 2],
    is_norm: bool,
    rng: &mut ChaCha8Rng,
) -> NamedTensor {
    let n = full[0] * full[1];
    let scale = 2.0 / (full[1] as f32).sqrt();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            if is_norm {
                1.0 + rng.random_range(-0.2f32..0.2)
            } else {
                rng.random_range(-scale..scale)
            }
        })
        .collect();
    let dims = if full[1] == 1 {
        vec![full[0]]
    } else {
        full.to_vec()
    };
    (name, dims, data)
}

/// Writes `tensors` as little-endian f32 into the safetensors file `path`.
fn write_safetensors(path: &Path, tensors: Vec<NamedTensor>) -> Result<(), ModelError> {
    let bad = |e: safetensors::SafeTensorError| ModelError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(bad)
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, path).map_err(bad)
}

/// Writes the `config.json` of a random model of `shape` to `path`.
fn write_config(path: &Path, shape: &ModelShape, max_positions: usize) -> Result<(), ModelError> {
    let config = serde_json::json!({
        "architectures": [if shape.qkv_bias { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "num_hidden_layers": shape.layers,
        "head_dim": shape.head_dim,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": max_positions,
        "vocab_size": shape.vocab,
        "tie_word_embeddings": shape.tied_embeddings,
        "hidden_act": "silu",
        "eos_token_id": 0,
    });
    std::fs::write(
        path,
        serde_json::to_string_pretty(&config).unwrap_or_default(),
    )
    .map_err(|e| ModelError::io(path, e))
}

/// A random small shape for property tests: head counts that rarely divide rank counts.
pub fn random_shape(rng: &mut impl Rng) -> ModelShape {
    let kv_heads = rng.random_range(1..=3);
    let group = rng.random_range(1..=4);
    let head_dim = 2 * rng.random_range(2..=8);
    ModelShape {
        hidden: rng.random_range(8..=48),
        layers: rng.random_range(1..=3),
        heads: kv_heads * group,
        kv_heads,
        head_dim,
        intermediate: rng.random_range(5..=70),
        vocab: rng.random_range(7..=90),
        tied_embeddings: rng.random_bool(0.5),
        qkv_bias: rng.random_bool(0.3),
    }
}
