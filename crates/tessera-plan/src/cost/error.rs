//! Errors of the cost model: hardware profiles and workloads.

/// Why a hardware profile or a workload could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    /// The name is no built-in profile and no file of that name exists.
    #[error("unknown hardware '{0}' (built in: cpu-here, h200-nvlink, h100-pcie; or a path to a .toml profile)")]
    UnknownHardware(String),
    /// A profile file could not be read.
    #[error("reading hardware profile {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's reason.
        message: String,
    },
    /// A profile file is not valid TOML or lacks a field.
    #[error("hardware profile {path} is not valid: {message}")]
    Toml {
        /// The file.
        path: String,
        /// The parser's reason.
        message: String,
    },
    /// A profile field is out of range.
    #[error("hardware profile '{name}': {field} must be a positive finite number (got {value})")]
    BadProfile {
        /// The profile's name.
        name: String,
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
    },
    /// The workload's phase name is not known.
    #[error("unknown phase '{0}' (decode or prefill)")]
    UnknownPhase(String),
    /// The workload is empty or impossible.
    #[error("workload: {0}")]
    BadWorkload(String),
}
