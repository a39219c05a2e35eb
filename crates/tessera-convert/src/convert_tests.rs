//! End-to-end conversion of tiny synthetic Llama GGUF files written by the test writer.

use std::path::Path;

use crate::gguf::test_writer::GgufWriter;
use crate::gguf::MetadataValue;
use crate::{convert_gguf_to_hf, ConvertError, GgmlType};

const HIDDEN: u64 = 32;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
const HEAD_DIM: u64 = HIDDEN / HEADS;
const FFN: u64 = 64;
const LAYERS: u64 = 2;
const VOCAB: u64 = 5;

fn strings(items: &[&str]) -> MetadataValue {
    MetadataValue::Array(
        items
            .iter()
            .map(|s| MetadataValue::String(s.to_string()))
            .collect(),
    )
}

/// Hugging Face Q/K weights with distinct values, and their llama.cpp-permuted form.
fn hf_and_permuted(rows: u64, heads: u64, seed: f32) -> (Vec<f32>, Vec<f32>) {
    let cols = HIDDEN as usize;
    let rows = rows as usize;
    let hf: Vec<f32> = (0..rows * cols).map(|v| seed + v as f32).collect();
    let half = rows / heads as usize / 2;
    let mut gguf = Vec::with_capacity(hf.len());
    for h in 0..heads as usize {
        for i in 0..half {
            for s in 0..2 {
                let row = (h * 2 + s) * half + i;
                gguf.extend_from_slice(&hf[row * cols..(row + 1) * cols]);
            }
        }
    }
    (hf, gguf)
}

/// The tiny model's architecture and tokenizer metadata.
fn tiny_llama_metadata() -> GgufWriter {
    GgufWriter::new()
        .str("general.architecture", "llama")
        .u32("llama.block_count", LAYERS as u32)
        .u32("llama.context_length", 256)
        .u32("llama.embedding_length", HIDDEN as u32)
        .u32("llama.feed_forward_length", FFN as u32)
        .u32("llama.attention.head_count", HEADS as u32)
        .u32("llama.attention.head_count_kv", KV_HEADS as u32)
        .f32("llama.rope.freq_base", 100000.0)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "smollm")
        .kv(
            "tokenizer.ggml.tokens",
            strings(&["<|end|>", "a", "b", "Ġ", "ab"]),
        )
        .kv("tokenizer.ggml.merges", strings(&["a b"]))
        .kv(
            "tokenizer.ggml.token_type",
            MetadataValue::Array(
                [3, 1, 1, 1, 1]
                    .into_iter()
                    .map(MetadataValue::I32)
                    .collect(),
            ),
        )
        .u32("tokenizer.ggml.bos_token_id", 0)
        .u32("tokenizer.ggml.eos_token_id", 0)
        .str("tokenizer.chat_template", "{{ messages }}")
}

/// A two-layer GQA Llama with a Q8_0 embedding; everything else F32.
fn tiny_llama(with_output: bool) -> GgufWriter {
    let mut embd = Vec::new();
    for row in 0..VOCAB {
        embd.extend(half::f16::from_f32(0.5).to_le_bytes());
        embd.extend((0..32).map(|i| (i as i8 - row as i8) as u8));
    }
    let mut w =
        tiny_llama_metadata().tensor("token_embd.weight", &[HIDDEN, VOCAB], GgmlType::Q8_0, embd);
    for i in 0..LAYERS {
        let (_, q) = hf_and_permuted(HEADS * HEAD_DIM, HEADS, 1000.0 * i as f32);
        let (_, k) = hf_and_permuted(KV_HEADS * HEAD_DIM, KV_HEADS, -1000.0 * i as f32);
        let filled = |n: u64, v: f32| vec![v; n as usize];
        w = w
            .f32_tensor(
                &format!("blk.{i}.attn_q.weight"),
                &[HIDDEN, HEADS * HEAD_DIM],
                &q,
            )
            .f32_tensor(
                &format!("blk.{i}.attn_k.weight"),
                &[HIDDEN, KV_HEADS * HEAD_DIM],
                &k,
            )
            .f32_tensor(
                &format!("blk.{i}.attn_v.weight"),
                &[HIDDEN, KV_HEADS * HEAD_DIM],
                &filled(HIDDEN * KV_HEADS * HEAD_DIM, 0.25),
            )
            .f32_tensor(
                &format!("blk.{i}.attn_output.weight"),
                &[HIDDEN, HIDDEN],
                &filled(HIDDEN * HIDDEN, 0.5),
            )
            .f32_tensor(
                &format!("blk.{i}.ffn_gate.weight"),
                &[HIDDEN, FFN],
                &filled(HIDDEN * FFN, 1.0),
            )
            .f32_tensor(
                &format!("blk.{i}.ffn_up.weight"),
                &[HIDDEN, FFN],
                &filled(HIDDEN * FFN, 2.0),
            )
            .f32_tensor(
                &format!("blk.{i}.ffn_down.weight"),
                &[FFN, HIDDEN],
                &filled(HIDDEN * FFN, 3.0),
            )
            .f32_tensor(
                &format!("blk.{i}.attn_norm.weight"),
                &[HIDDEN],
                &filled(HIDDEN, 4.0),
            )
            .f32_tensor(
                &format!("blk.{i}.ffn_norm.weight"),
                &[HIDDEN],
                &filled(HIDDEN, 5.0),
            );
    }
    w = w.f32_tensor("output_norm.weight", &[HIDDEN], &[6.0; HIDDEN as usize]);
    if with_output {
        w = w.f32_tensor(
            "output.weight",
            &[HIDDEN, VOCAB],
            &[7.0; (HIDDEN * VOCAB) as usize],
        );
    }
    w
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensor_values(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), values)
}

#[test]
fn tiny_llama_converts_with_hf_names_unpermuted_qk_and_tied_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny_llama(false).write(&gguf);
    let out = dir.path().join("out");
    convert_gguf_to_hf(&gguf, &out).unwrap();

    let config = read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["num_key_value_heads"], KV_HEADS);
    assert_eq!(config["head_dim"], HEAD_DIM);
    assert_eq!(config["rms_norm_eps"], 1e-5);
    assert_eq!(config["rope_theta"], 100000.0);
    assert_eq!(config["vocab_size"], VOCAB);
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(
        read_json(&out.join("generation_config.json"))["eos_token_id"],
        0
    );
    let tok_config = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tok_config["chat_template"], "{{ messages }}");
    assert_eq!(tok_config["model_max_length"], 256);

    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len() as u64, 2 + 9 * LAYERS);
    assert!(st.tensor("lm_head.weight").is_err());

    let (shape, embd) = tensor_values(&st, "model.embed_tokens.weight");
    assert_eq!(shape, [VOCAB as usize, HIDDEN as usize]);
    assert_eq!((embd[0], embd[31], embd[32]), (0.0, 15.5, -0.5)); // row 1 is shifted by one

    for i in 0..LAYERS {
        let (hf_q, _) = hf_and_permuted(HEADS * HEAD_DIM, HEADS, 1000.0 * i as f32);
        let (hf_k, _) = hf_and_permuted(KV_HEADS * HEAD_DIM, KV_HEADS, -1000.0 * i as f32);
        let (q_shape, q) = tensor_values(&st, &format!("model.layers.{i}.self_attn.q_proj.weight"));
        let (k_shape, k) = tensor_values(&st, &format!("model.layers.{i}.self_attn.k_proj.weight"));
        assert_eq!(q_shape, [(HEADS * HEAD_DIM) as usize, HIDDEN as usize]);
        assert_eq!(k_shape, [(KV_HEADS * HEAD_DIM) as usize, HIDDEN as usize]);
        assert_eq!(q, hf_q);
        assert_eq!(k, hf_k);
        let (down_shape, _) = tensor_values(&st, &format!("model.layers.{i}.mlp.down_proj.weight"));
        assert_eq!(down_shape, [HIDDEN as usize, FFN as usize]);
        let (_, norm) = tensor_values(
            &st,
            &format!("model.layers.{i}.post_attention_layernorm.weight"),
        );
        assert_eq!(norm[0], 5.0);
    }
}

#[test]
fn output_weight_becomes_lm_head_and_unties_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny_llama(true).write(&gguf);
    let out = dir.path().join("out");
    convert_gguf_to_hf(&gguf, &out).unwrap();
    assert_eq!(
        read_json(&out.join("config.json"))["tie_word_embeddings"],
        false
    );
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        tensor_values(&st, "lm_head.weight").0,
        [VOCAB as usize, HIDDEN as usize]
    );
}

/// Only the output directory's parent may hold leftovers; it must hold nothing new.
fn assert_no_staging_left(parent: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tessera"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn unknown_tensor_and_unsupported_type_fail_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    let out = dir.path().join("out");

    tiny_llama(false)
        .f32_tensor("rope_freqs.weight", &[4], &[1.0; 4])
        .write(&gguf);
    let err = convert_gguf_to_hf(&gguf, &out).unwrap_err();
    assert!(
        matches!(&err, ConvertError::UnexpectedTensor(n) if n == "rope_freqs.weight"),
        "{err}"
    );
    assert!(!out.exists());

    let mut w = tiny_llama(false);
    w = w.tensor(
        "output.weight",
        &[HIDDEN, VOCAB],
        GgmlType::from_id(14),
        vec![0; 210],
    );
    w.write(&gguf);
    let err = convert_gguf_to_hf(&gguf, &out).unwrap_err().to_string();
    assert!(
        err.contains("Q6_K") && err.contains("output.weight"),
        "{err}"
    );
    assert!(!out.exists());
    assert_no_staging_left(dir.path());
}

#[test]
fn non_empty_output_directory_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny_llama(false).write(&gguf);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let err = convert_gguf_to_hf(&gguf, &out).unwrap_err();
    assert!(matches!(err, ConvertError::OutputExists(_)), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );

    // An existing empty directory is fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    convert_gguf_to_hf(&gguf, &empty).unwrap();
    assert!(empty.join("model.safetensors").is_file());
    assert_no_staging_left(dir.path());
}

#[test]
fn replacing_an_existing_conversion_swaps_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny_llama(false).write(&gguf);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    crate::convert::convert(&gguf, &out, crate::convert::Existing::Replace).unwrap();
    assert!(!out.join("stale.txt").exists());
    assert!(out.join("tokenizer.json").is_file());
    assert_no_staging_left(dir.path());
}

#[test]
fn quantized_matrices_are_kept_in_their_blocks_beside_the_f32_copy() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("tiny.gguf");
    tiny_llama(false).write(&gguf);
    let out = dir.path().join("out");
    convert_gguf_to_hf(&gguf, &out).unwrap();

    let bytes = std::fs::read(out.join(crate::BLOCKS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // Only the Q8_0 embedding is block-quantized in the tiny model; F32 tensors stay out.
    assert_eq!(st.names(), ["model.embed_tokens.weight"]);
    let t = st.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::U8);
    assert_eq!(t.shape(), [VOCAB as usize, 34]);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata().as_ref().unwrap()["model.embed_tokens.weight"],
        "q8_0"
    );
    // The blocks dequantize to exactly the f32 copy.
    let f32_bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let f32_st = safetensors::SafeTensors::deserialize(&f32_bytes).unwrap();
    let (_, embd) = tensor_values(&f32_st, "model.embed_tokens.weight");
    let decoded = crate::dequantize("embd", GgmlType::Q8_0, t.data(), embd.len()).unwrap();
    assert_eq!(decoded, embd);
}
