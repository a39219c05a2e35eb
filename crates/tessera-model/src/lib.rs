//! Llama-family models (Llama 2/3, SmolLM2, Mistral, Qwen2): `config.json`, sharded
//! safetensors loading, tokenizer and chat template, and one rank's forward pass.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod backend;
mod config;
mod error;
mod paged;
mod rank;
pub mod synthetic;
mod tokenizer;
mod weights;

pub use backend::{Backend, CpuBackend, Matrix, WeightDtype};
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use error::ModelError;
pub use paged::PagedKvCache;
pub use rank::{logit_rows, LogitRows, RankModel, SeqInput};
pub use tokenizer::{ChatMessage, TextTokenizer};
pub use weights::WeightFiles;
