//! Mistral (sliding window), Qwen2 (q/k/v biases) and Llama 3 (rope scaling) against
//! logits from Hugging Face transformers on tiny random models (`tools/gen_fixtures.py`).

use serde_json::Value;
use tessera_engine::{Coordinator, EngineOptions, GenerateRequest};
use tessera_model::{LogitRows, ModelConfig};
use tessera_plan::Strategy;

fn check(name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let ids: Vec<u32> = reference["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let expected: Vec<f32> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let greedy: Vec<u32> = reference["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let config = ModelConfig::from_dir(&dir).unwrap();
    for tp in 1..=3 {
        let plan = Strategy::Megatron.plan(&config.shape, tp).unwrap();
        let mut engine = Coordinator::start(&dir, plan, &EngineOptions::default()).unwrap();
        let got = engine.forward(&ids, LogitRows::All).unwrap();
        assert_eq!(got.len(), expected.len());
        let worst = got
            .iter()
            .zip(&expected)
            .map(|(g, e)| (g - e).abs() / e.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "{name} tp {tp}: logits differ from transformers by {worst}"
        );
        let out = engine
            .generate(&GenerateRequest {
                prompt: ids.clone(),
                max_tokens: greedy.len(),
                temperature: 0.0,
                seed: 0,
                stop_ids: vec![],
            })
            .unwrap();
        assert_eq!(
            out.completion, greedy,
            "{name} tp {tp}: greedy tokens differ"
        );
    }
}

#[test]
fn mistral_with_sliding_window_matches_transformers() {
    check("tiny-mistral");
}

#[test]
fn qwen2_with_qkv_biases_matches_transformers() {
    check("tiny-qwen2");
}

#[test]
fn llama3_with_rope_scaling_matches_transformers() {
    check("tiny-llama3");
}
