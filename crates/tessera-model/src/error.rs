//! Errors of model loading, tokenization and the forward pass.

use std::path::PathBuf;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `config.json` is malformed or describes an unsupported model.
    #[error("{path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The architecture named in `config.json` is not supported.
    #[error("{path}: architecture '{arch}' is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)")]
    UnknownArchitecture {
        /// The config file.
        path: PathBuf,
        /// The architecture named.
        arch: String,
    },
    /// A safetensors file is malformed or truncated.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A shard file that `model.safetensors.index.json` names is not in the directory.
    #[error("{index} names the shard '{file}', which is not in {dir}; download every file the index lists")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard's file name, as the index spells it.
        file: String,
        /// The model directory.
        dir: PathBuf,
    },
    /// A weight the model needs is in none of the files.
    #[error("weight '{name}' is missing from the model files in {dir}")]
    MissingWeight {
        /// The Hugging Face tensor name.
        name: String,
        /// The model directory.
        dir: PathBuf,
    },
    /// A weight has another shape than the config implies.
    #[error("weight '{name}' has shape {got:?} but the config implies {expected:?}")]
    WeightShape {
        /// The Hugging Face tensor name.
        name: String,
        /// Shape from the config.
        expected: Vec<usize>,
        /// Shape in the file.
        got: Vec<usize>,
    },
    /// A weight's dtype cannot be converted.
    #[error("weight '{name}' has dtype {dtype}, which Tessera cannot load (f32, f16, bf16 only)")]
    WeightDtype {
        /// The Hugging Face tensor name.
        name: String,
        /// The dtype in the file.
        dtype: String,
    },
    /// A weight stored in 32-column blocks (`--dtype q8_0|q4_0|q4_1`) would be cut inside
    /// a block by this rank's slice (or is not a whole number of blocks wide).
    #[error("weight '{name}' cannot be held as {dtype}: this rank's columns {start}..{end} of {total} do not fall on 32-column block boundaries; choose a rank count or plan whose column splits are multiples of 32, or use --dtype f32 or bf16")]
    BlockSplit {
        /// The Hugging Face tensor name.
        name: String,
        /// The block dtype asked for.
        dtype: &'static str,
        /// First column of the rank's slice.
        start: usize,
        /// End of the rank's slice.
        end: usize,
        /// Columns of the whole weight.
        total: usize,
    },
    /// The tokenizer files are missing or malformed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// A sequence would exceed the model's context.
    #[error("{tokens} tokens exceed the model's context of {context} tokens")]
    ContextOverflow {
        /// Tokens the request needs.
        tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A batch is inconsistent with the cache (block tables, positions).
    #[error("invalid batch: {0}")]
    BadBatch(String),
    /// The plan does not fit the model.
    #[error(transparent)]
    Plan(#[from] tessera_plan::PlanError),
    /// A kernel refused its arguments.
    #[error(transparent)]
    Kernel(#[from] tessera_kernels::KernelError),
    /// A collective failed.
    #[error(transparent)]
    Comm(#[from] tessera_comm::CommError),
    /// A backend cannot run what the plan asks for (refused at load).
    #[error("the {backend} backend cannot run {what}; {hint}")]
    Unsupported {
        /// The backend ("cuda").
        backend: &'static str,
        /// What the plan asks for.
        what: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// A device backend (CUDA) failed; the message names the operation.
    #[error("{backend}: {message}")]
    Device {
        /// The backend ("cuda").
        backend: &'static str,
        /// What failed.
        message: String,
    },
}

impl ModelError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
