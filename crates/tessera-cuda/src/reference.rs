//! Plain CPU references for what `tessera_kernels` has no function for: an f64 matmul, the
//! device sampler's rule (in the op checks' terms, over `tessera_model::RowChooser`), and
//! Llama 3 rotary frequencies through the config parser.

use std::path::Path;

use crate::error::CudaError;
use crate::ops::SampleParams;
use tessera_model::RowChooser;

/// `y[m, n] = x[m, k] · w[n, k]^T` summed in f64.
pub fn matmul_f64(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
            y[i * n + j] = s as f32;
        }
    }
    y
}

/// Llama 3.1's rotary frequencies (theta 500000, factor 8) for `head_dim`, computed by
/// the model config's own code.
pub fn llama3_inv_freq(head_dim: usize) -> Result<Vec<f32>, CudaError> {
    let text = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": head_dim * 4, "intermediate_size": 8,
        "num_attention_heads": 4, "num_key_value_heads": 1, "num_hidden_layers": 1, "head_dim": head_dim,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072, "vocab_size": 8,
        "hidden_act": "silu",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    })
    .to_string();
    let config = tessera_model::ModelConfig::parse(&text, Path::new("llama3-rope.json"))?;
    Ok(config.rope_inv_freq())
}

/// The device sampler's rule on the CPU (`tessera_model::RowChooser`, which the engine's
/// CPU ranks and sampler use too): keep the `top_k` largest logits and the smallest
/// most-probable set of `top_p` of their mass (ties kept together), then the first kept
/// index whose running mass (index order) exceeds `u` times the kept mass.
pub fn sample(logits: &[f32], p: SampleParams, u: f32) -> Option<usize> {
    RowChooser::default().sample(logits, &p.choice(u))
}

/// Whether `pick` is a right draw for uniform `u` up to `tol` of probability mass (the
/// device sums in f32 and in another order); see `tessera_model::RowChooser::accepts`.
pub fn sample_accepts(logits: &[f32], p: SampleParams, u: f32, pick: usize, tol: f64) -> bool {
    RowChooser::default().accepts(logits, &p.choice(u), pick, tol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_frequencies_are_scaled() {
        let f = llama3_inv_freq(128).expect("config parses");
        assert_eq!(f.len(), 64);
        // The lowest frequency is divided by the factor 8.
        let plain = 1.0 / 500000f32.powf(126.0 / 128.0);
        assert!(
            (f[63] - plain / 8.0).abs() < 1e-12,
            "{} vs {}",
            f[63],
            plain / 8.0
        );
    }
}
