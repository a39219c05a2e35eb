//! Plain CPU references for what `tessera_kernels` has no function for: an f64 matmul, the
//! device sampler's rule, and Llama 3 rotary frequencies through the config parser.

use std::path::Path;

use crate::error::CudaError;
use crate::ops::SampleParams;

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

/// The device sampler's rule on the CPU: keep the `top_k` largest logits and the smallest
/// most-probable set of mass `top_p` (ties kept together), then the first kept index whose
/// running mass (index order) exceeds `u` times the kept mass.
pub fn sample(logits: &[f32], p: SampleParams, u: f32) -> Option<usize> {
    let mx = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if mx == f32::NEG_INFINITY {
        return None;
    }
    let weight = |v: f32| (((v - mx) / p.temperature) as f64).exp();
    let thr = threshold(logits, p);
    let kept = |v: f32| !v.is_nan() && v >= thr;
    let total: f64 = logits
        .iter()
        .filter(|&&v| kept(v))
        .map(|&v| weight(v))
        .sum();
    let target = u as f64 * total;
    let mut run = 0.0;
    let mut last = None;
    for (i, &v) in logits.iter().enumerate() {
        if kept(v) {
            run += weight(v);
            last = Some(i);
            if run > target {
                return Some(i);
            }
        }
    }
    last
}

/// Whether `pick` is a right draw for uniform `u` up to `tol` of probability mass: the
/// device sums in f32 and in another order, so a draw within `tol` of a boundary (of the
/// nucleus or between two tokens) may land on either side. `pick` must be kept under a
/// nucleus of `top_p + tol`, and its cumulative mass interval (index order, f64) must
/// hold `u` within `tol`.
pub fn sample_accepts(logits: &[f32], p: SampleParams, u: f32, pick: usize, tol: f64) -> bool {
    let Some(&v_pick) = logits.get(pick) else {
        return false;
    };
    if v_pick.is_nan() {
        return false;
    }
    let loose = SampleParams {
        top_p: (p.top_p + tol as f32).min(1.0),
        ..p
    };
    if v_pick < threshold(logits, loose) {
        return false;
    }
    let thr = threshold(logits, p);
    let mx = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let weight = |v: f32| (((v - mx) / p.temperature) as f64).exp();
    let kept = |v: f32| !v.is_nan() && v >= thr;
    let total: f64 = logits
        .iter()
        .filter(|&&v| kept(v))
        .map(|&v| weight(v))
        .sum();
    let before: f64 = logits[..pick]
        .iter()
        .filter(|&&v| kept(v))
        .map(|&v| weight(v))
        .sum::<f64>()
        / total;
    let after = before + weight(v_pick) / total;
    (before - tol..=after + tol).contains(&(u as f64))
}

/// The smallest kept logit under `p` (top-k, then nucleus), as in [`sample`].
fn threshold(logits: &[f32], p: SampleParams) -> f32 {
    let mx = logits
        .iter()
        .copied()
        .filter(|v| !v.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    let weight = |v: f32| (((v - mx) / p.temperature) as f64).exp();
    let mut sorted: Vec<f32> = logits.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut thr = f32::NEG_INFINITY;
    if p.top_k > 0 && p.top_k < sorted.len() {
        thr = sorted[p.top_k - 1];
    }
    if p.top_p < 1.0 {
        let total: f64 = sorted.iter().map(|&v| weight(v)).sum();
        let mut run = 0.0;
        for &v in &sorted {
            run += weight(v);
            if run >= p.top_p as f64 * total {
                thr = thr.max(v);
                break;
            }
        }
    }
    thr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_reference_respects_top_k_and_top_p() {
        let logits = [0.0, 5.0, 1.0, 4.0, f32::NAN, 3.0];
        let greedyish = SampleParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
        };
        for u in [0.0, 0.5, 0.99] {
            assert_eq!(sample(&logits, greedyish, u), Some(1));
        }
        let two = SampleParams {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
        };
        assert_eq!(sample(&logits, two, 0.99), Some(3));
        // Token 1 holds ~66% of the mass: top_p 0.5 keeps it alone.
        let nucleus = SampleParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
        };
        assert_eq!(sample(&logits, nucleus, 0.99), Some(1));
        let all = SampleParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        assert_eq!(sample(&logits, all, 0.0), Some(0));
        assert_eq!(sample(&[f32::NAN], all, 0.5), None);
    }

    #[test]
    fn sample_accepts_the_exact_draw_and_rejects_others() {
        let logits: Vec<f32> = (0..200)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
            .collect();
        for params in [
            SampleParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
            },
            SampleParams {
                temperature: 0.7,
                top_k: 20,
                top_p: 1.0,
            },
            SampleParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.8,
            },
        ] {
            for u in [0.05f32, 0.3, 0.77, 0.999] {
                let exact = sample(&logits, params, u).expect("a token");
                assert!(
                    sample_accepts(&logits, params, u, exact, 1e-6),
                    "{params:?} u {u}"
                );
                // Every other token is rejected unless it is the same logit's twin.
                for other in 0..logits.len() {
                    if other != exact && logits[other] != logits[exact] {
                        assert!(
                            !sample_accepts(&logits, params, u, other, 1e-6),
                            "{params:?} u {u} token {other}"
                        );
                    }
                }
            }
        }
    }

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
