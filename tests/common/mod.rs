//! Helpers shared by the integration tests: paths, the default model, running the CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub mod engine_ref;

/// The workspace root (where `models/` lives).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/reference/`, or `TESSERA_REFERENCE_DIR`.
#[allow(
    clippy::disallowed_methods,
    reason = "a test harness, not a library, may read the environment"
)]
pub fn reference_dir() -> PathBuf {
    std::env::var_os("TESSERA_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/reference"))
}

/// The `tessera` binary built for these tests.
pub fn tessera() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env("RUST_LOG", "warn");
    c
}

/// Runs `tessera` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    tessera().args(args).output().expect("tessera binary runs")
}

/// The default model directory, pulled once (through the CLI) if missing.
pub fn default_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let models = root().join("models");
        let out = tessera()
            .args(["pull", "--models-dir"])
            .arg(&models)
            .output()
            .expect("tessera pull runs");
        assert!(
            out.status.success(),
            "tessera pull failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        models.join("smollm2-135m-instruct")
    })
}

/// Parses stdout as one JSON value, failing with stderr shown.
pub fn json_stdout(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "tessera failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON value ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
