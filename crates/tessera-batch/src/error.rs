//! The batch crate's error type: what stopped a job as a whole (per-line failures are data,
//! written to the errors file, never an `Err`).

use std::path::PathBuf;

/// Why a batch job could not run.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The same id appears on two input lines; nothing was run.
    #[error("duplicate id {id:?} on input lines {first} and {second}: ids must be unique (nothing was run)")]
    DuplicateId {
        /// The id.
        id: String,
        /// Line of its first occurrence (1-based).
        first: usize,
        /// Line of the repeat (1-based).
        second: usize,
    },
    /// The configuration cannot work (explains what to change).
    #[error("{0}")]
    Config(String),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl BatchError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
