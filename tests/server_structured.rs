//! `tessera serve` structured output, tool calling and refusals through the official
//! `openai` Python client (tests/openai_client/test_structured.py): `parse()` with a
//! Pydantic model, nested JSON schemas with `n` > 1 at temperature 1, streaming, the
//! vLLM `guided_*` extras on both endpoints, a full tool round trip, streamed tool calls,
//! named and `auto` tool choices, the completions `max_tokens` default, and a 400 naming
//! each field Tessera cannot honour.
//!
//! Needs `python3` with `openai` and `pydantic`; without them this test fails, it never
//! skips.

mod common;
#[path = "openai_client/harness.rs"]
mod harness;

use std::process::Command;

use harness::{Server, MODEL};

#[test]
fn structured_output_and_tool_calls_pass_through_the_openai_client() {
    let server = Server::start(&[]);
    let script = common::root().join("tests/openai_client/test_structured.py");
    let out = Command::new("python3")
        .arg(&script)
        .args(["--base-url", &server.base_url(), "--model", MODEL])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "test_structured.py failed ({}); are `openai` and `pydantic` installed?\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    println!("{stdout}");
}
