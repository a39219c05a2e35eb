//! `tessera serve` through the official `openai` Python client: chat and completions,
//! streaming, n, stop strings, logprobs, prompt logprobs (echo), seeds, usage counts,
//! sampling parameters (top_k, min_p, logit_bias, penalties, max_completion_tokens),
//! chat template options, and greedy output equal to the transformers reference for every
//! public prompt (tests/openai_client/test_openai.py).
//!
//! Needs `python3` with the `openai` and `tokenizers` packages (`.ci/run` installs them);
//! without them this test fails, it never skips.

mod common;
#[path = "openai_client/harness.rs"]
mod harness;

use std::process::Command;

use harness::{Server, MODEL};

#[test]
fn openai_python_client_checks_pass_against_the_real_server() {
    let server = Server::start(&[]);
    let script = common::root().join("tests/openai_client/test_openai.py");
    let reference = common::reference_dir().join("reference_public.json");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--base-url", &server.base_url(), "--model", MODEL])
        .arg("--model-dir")
        .arg(common::default_model())
        .arg("--reference")
        .arg(&reference)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "test_openai.py failed ({}); is `python3 -m pip install openai tokenizers` done?\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    println!("{stdout}");
}
