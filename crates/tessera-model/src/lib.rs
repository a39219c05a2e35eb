//! Llama-family models (Llama 2/3, SmolLM2, Mistral, Qwen2): `config.json`, sharded
//! safetensors loading, tokenizer and chat template, and one rank's forward pass.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod backend;
mod blocks;
mod choice;
mod config;
mod cpu;
mod error;
mod forward;
mod greedy;
mod paged;
mod rank;
mod step_seq;
pub mod synthetic;
mod tokenizer;
mod weights;
pub mod worker;

pub use backend::{Backend, HeadLayout, Matrix, PlanNeeds, Weight, WeightDtype, WeightValues};
pub use choice::{choose, RowChoice, RowChooser};
pub use config::{Architecture, ModelConfig, RopeScaling};
pub use cpu::{CpuBackend, CpuStep};
pub use error::ModelError;
pub use forward::{StepRows, Workspace};
pub use greedy::{greedy_token, sanitize_logit};
pub use paged::{KvDtype, KvLayer, PagedKvCache};
pub use rank::{check_tokens, RankModel};
pub use step_seq::{logit_rows, LogitRows, StepSeq};
pub use tokenizer::{ChatMessage, TextTokenizer};
pub use weights::WeightFiles;
