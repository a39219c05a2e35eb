//! GGUF Llama file -> Hugging Face Llama directory, written atomically.
//!
//! Everything is checked before the first byte is written: architecture, tokenizer, the
//! name, shape and type of every tensor. The directory is assembled next to its final
//! place and renamed into it, so a failed or interrupted conversion leaves nothing behind.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::blocks_out::{write_blocks, BLOCKS_FILE};
use crate::error::ConvertError;
use crate::gguf::{GgufFile, TensorInfo};
use crate::gguf_vocab::GgufVocab;
use crate::llama_config::LlamaConfig;
use crate::permute::unpermute_qk_rows;
use crate::safetensors_out::SafetensorsWriter;

/// Converts the Llama GGUF file `gguf` into a Hugging Face directory `out_dir` holding
/// `model.safetensors` (f32), `model.blocks.safetensors` (the quantized matrices in their
/// GGML blocks), `config.json`, `generation_config.json`, `tokenizer.json`
/// and `tokenizer_config.json`.
///
/// `out_dir` must not exist or be empty. Tensors are dequantized to f32, and the Q/K row
/// interleaving llama.cpp applies for its rope layout is undone.
pub fn convert_gguf_to_hf(gguf: &Path, out_dir: &Path) -> Result<(), ConvertError> {
    convert(gguf, out_dir, Existing::Refuse)
}

/// What to do when the output directory already holds files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Existing {
    /// Fail with [`ConvertError::OutputExists`].
    Refuse,
    /// Swap the old directory out once the new one is complete.
    Replace,
}

pub(crate) fn convert(
    gguf_path: &Path,
    out_dir: &Path,
    existing: Existing,
) -> Result<(), ConvertError> {
    let started = Instant::now();
    if existing == Existing::Refuse && !is_absent_or_empty(out_dir)? {
        return Err(ConvertError::OutputExists(out_dir.to_owned()));
    }
    let gguf = GgufFile::open(gguf_path)?;
    let vocab = GgufVocab::from_metadata(gguf.metadata())?;
    let config = LlamaConfig::from_gguf_metadata(
        gguf.metadata(),
        vocab.len(),
        gguf.tensor("output.weight").is_some(),
        vocab.bos(),
        vocab.eos(),
    )?;
    let plan = plan_tensors(&gguf, &config)?;
    tracing::info!(
        gguf = %gguf_path.display(),
        tensors = plan.len(),
        layers = config.num_hidden_layers,
        "converting GGUF to a Hugging Face directory"
    );

    let parent = parent_dir(out_dir);
    std::fs::create_dir_all(&parent).map_err(ConvertError::io("creating", &parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".tessera-convert-")
        .tempdir_in(&parent)
        .map_err(ConvertError::io(
            "creating a temporary directory in",
            &parent,
        ))?;

    write_safetensors(&gguf, &plan, &staging.path().join("model.safetensors"))?;
    write_blocks(&gguf, &plan, &staging.path().join(BLOCKS_FILE))?;
    write_json(&staging.path().join("config.json"), &config)?;
    write_json(
        &staging.path().join("generation_config.json"),
        &config.generation_config_json(),
    )?;
    let tokenizer_json = vocab
        .tokenizer_json()
        .map_err(json_err(staging.path().join("tokenizer.json")))?;
    write_text(&staging.path().join("tokenizer.json"), &tokenizer_json)?;
    let tokenizer_config = vocab
        .tokenizer_config_json(config.max_position_embeddings)
        .map_err(json_err(staging.path().join("tokenizer_config.json")))?;
    write_text(
        &staging.path().join("tokenizer_config.json"),
        &tokenizer_config,
    )?;

    move_into_place(staging, out_dir, existing)?;
    tracing::info!(out = %out_dir.display(), "converted in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One output tensor: where it comes from and how it is reshaped.
#[derive(Debug)]
pub(crate) struct PlannedTensor<'a> {
    pub(crate) source: &'a TensorInfo,
    pub(crate) hf_name: String,
    /// Hugging Face shape, outermost first.
    pub(crate) shape: Vec<usize>,
    /// `Some(heads)` for Q and K weights, whose rows llama.cpp interleaved per head.
    pub(crate) unpermute_heads: Option<usize>,
}

/// Maps every GGUF tensor to its Hugging Face name and checks shape, type and bounds.
fn plan_tensors<'a>(
    gguf: &'a GgufFile,
    config: &LlamaConfig,
) -> Result<Vec<PlannedTensor<'a>>, ConvertError> {
    let expected = expected_tensors(config, gguf.tensor("output.weight").is_some());
    for info in gguf.tensors() {
        if !expected.iter().any(|e| e.gguf_name == info.name) {
            return Err(ConvertError::UnexpectedTensor(info.name.clone()));
        }
    }
    expected
        .into_iter()
        .map(|e| {
            let source = gguf
                .tensor(&e.gguf_name)
                .ok_or_else(|| ConvertError::MissingTensor(e.gguf_name.clone()))?;
            let shape = source.shape()?;
            if shape != e.shape {
                return Err(ConvertError::layout(
                    &source.name,
                    format!(
                        "shape {shape:?} (outermost first) does not match the config's {:?}",
                        e.shape
                    ),
                ));
            }
            // Checks type support and that the data lies inside the file.
            gguf.tensor_data(source)?;
            Ok(PlannedTensor {
                source,
                hf_name: e.hf_name,
                shape,
                unpermute_heads: e.unpermute_heads,
            })
        })
        .collect()
}

struct ExpectedTensor {
    gguf_name: String,
    hf_name: String,
    shape: Vec<usize>,
    unpermute_heads: Option<usize>,
}

/// The tensors of a Llama model in output order, with GGUF and Hugging Face names.
fn expected_tensors(config: &LlamaConfig, has_output: bool) -> Vec<ExpectedTensor> {
    let hidden = config.hidden_size;
    let q_rows = config.num_attention_heads * config.head_dim;
    let kv_rows = config.num_key_value_heads * config.head_dim;
    let ffn = config.intermediate_size;
    let t = |gguf: String, hf: String, shape: Vec<usize>, heads: Option<usize>| ExpectedTensor {
        gguf_name: gguf,
        hf_name: hf,
        shape,
        unpermute_heads: heads,
    };
    let mut out = vec![t(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![config.vocab_size, hidden],
        None,
    )];
    for i in 0..config.num_hidden_layers {
        let layer = |gguf: &str, hf: &str, shape: Vec<usize>, heads: Option<usize>| {
            t(
                format!("blk.{i}.{gguf}.weight"),
                format!("model.layers.{i}.{hf}.weight"),
                shape,
                heads,
            )
        };
        out.extend([
            layer(
                "attn_q",
                "self_attn.q_proj",
                vec![q_rows, hidden],
                Some(config.num_attention_heads),
            ),
            layer(
                "attn_k",
                "self_attn.k_proj",
                vec![kv_rows, hidden],
                Some(config.num_key_value_heads),
            ),
            layer("attn_v", "self_attn.v_proj", vec![kv_rows, hidden], None),
            layer(
                "attn_output",
                "self_attn.o_proj",
                vec![hidden, q_rows],
                None,
            ),
            layer("ffn_gate", "mlp.gate_proj", vec![ffn, hidden], None),
            layer("ffn_up", "mlp.up_proj", vec![ffn, hidden], None),
            layer("ffn_down", "mlp.down_proj", vec![hidden, ffn], None),
            layer("attn_norm", "input_layernorm", vec![hidden], None),
            layer("ffn_norm", "post_attention_layernorm", vec![hidden], None),
        ]);
    }
    out.push(t(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![hidden],
        None,
    ));
    if has_output {
        out.push(t(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![config.vocab_size, hidden],
            None,
        ));
    }
    out
}

fn write_safetensors(
    gguf: &GgufFile,
    plan: &[PlannedTensor<'_>],
    path: &Path,
) -> Result<(), ConvertError> {
    let header: Vec<(String, Vec<usize>)> = plan
        .iter()
        .map(|p| (p.hf_name.clone(), p.shape.clone()))
        .collect();
    let mut writer = SafetensorsWriter::create(path, &header)?;
    let progress = progress_bar(plan.len());
    for tensor in plan {
        progress.set_message(tensor.hf_name.clone());
        let mut values = gguf.dequantize(tensor.source)?;
        if let Some(heads) = tensor.unpermute_heads {
            values = unpermute_qk_rows(
                &tensor.source.name,
                &values,
                tensor.shape[0],
                tensor.shape[1],
                heads,
            )?;
        }
        writer.write_tensor(&tensor.hf_name, &values)?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    writer.finish()
}

/// A bar over tensors on an interactive stderr; hidden when logs go to a file or pipe.
fn progress_bar(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{elapsed}] {bar:40} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

fn json_err(path: PathBuf) -> impl FnOnce(serde_json::Error) -> ConvertError {
    move |source| ConvertError::Json { path, source }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), ConvertError> {
    let text = serde_json::to_string_pretty(value).map_err(json_err(path.to_owned()))?;
    write_text(path, &text)
}

fn write_text(path: &Path, text: &str) -> Result<(), ConvertError> {
    std::fs::write(path, text).map_err(ConvertError::io("writing", path))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn is_absent_or_empty(dir: &Path) -> Result<bool, ConvertError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(ConvertError::io("reading", dir)(e)),
    }
}

/// Renames the finished staging directory to `out_dir`.
fn move_into_place(
    staging: tempfile::TempDir,
    out_dir: &Path,
    existing: Existing,
) -> Result<(), ConvertError> {
    // Kept alive until the end so that the old directory is deleted when it drops.
    let mut old = None;
    if out_dir.exists() {
        if is_absent_or_empty(out_dir)? {
            std::fs::remove_dir(out_dir).map_err(ConvertError::io("removing", out_dir))?;
        } else if existing == Existing::Replace {
            let trash = tempfile::Builder::new()
                .prefix(".tessera-old-")
                .tempdir_in(parent_dir(out_dir))
                .map_err(ConvertError::io(
                    "creating a temporary directory next to",
                    out_dir,
                ))?;
            let target = trash.path().join("old");
            std::fs::rename(out_dir, &target).map_err(ConvertError::io("moving aside", out_dir))?;
            old = Some(trash);
        } else {
            return Err(ConvertError::OutputExists(out_dir.to_owned()));
        }
    }
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, out_dir) {
        // Best effort: put the old directory back and drop the new one; the rename error
        // is what the caller needs to see.
        if let Some(trash) = &old {
            let _ = std::fs::rename(trash.path().join("old"), out_dir);
        }
        let _ = std::fs::remove_dir_all(&staged);
        return Err(ConvertError::io(
            "renaming the converted directory to",
            out_dir,
        )(e));
    }
    drop(old);
    Ok(())
}
