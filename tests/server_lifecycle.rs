//! `tessera serve` request and process lifecycle: a client that hangs up (mid-stream,
//! before its first token, or while waiting for a whole response) cancels its request and
//! frees its KV blocks within two engine steps (seen in /metrics); SIGTERM stops
//! accepting, lets in-flight requests finish, and exits 0; the shutdown timeout ends
//! requests that run past it.

mod common;
#[path = "openai_client/harness.rs"]
mod harness;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::{sample, EventStream, Server, MODEL};
use serde_json::{json, Value};

const COMPLETIONS: &str = "/v1/completions";

/// A prompt of `len` token ids no other request shares (so the prefix cache cannot help).
fn unique_prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| 100 + (i * 7919 + salt * 104_729) % 40_000)
        .collect()
}

fn long_request(prompt: Value, max_tokens: usize, stream: bool) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": true, "stream": stream})
}

/// A prompt whose prefill takes several engine steps (512 tokens each by default), so a
/// client can leave before its first token even on a fast machine.
const PREFILL_TOKENS: usize = 4000;

/// Waits until the engine holds KV blocks (the request is being computed).
fn wait_blocks_in_use(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("tessera_kv_blocks_used") == 0.0 {
        assert!(Instant::now() < deadline, "the request never got KV blocks");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Engine steps after which a cancelled request's blocks must be free: the step in flight
/// when the client left, and the one during which the server noticed.
const STEPS_TO_FREE: f64 = 2.0;

/// The engine's step counter, read right after a client hung up.
fn steps_now(server: &Server) -> f64 {
    server.metric("tessera_steps_total")
}

/// Asserts the request cancelled when the step counter read `steps` frees its blocks
/// within [`STEPS_TO_FREE`] steps, then that the engine stays idle: nothing running, no
/// new tokens.
fn assert_cancelled(server: &Server, steps: f64, what: &str) {
    let start = Instant::now();
    loop {
        // One scrape, so blocks and steps come from the same engine snapshot.
        let text = server.metrics();
        let metric = |name| sample(&text, name).unwrap_or_else(|| panic!("no {name}"));
        let (blocks, now) = (
            metric("tessera_kv_blocks_used"),
            metric("tessera_steps_total"),
        );
        if blocks == 0.0 {
            assert!(
                now <= steps + STEPS_TO_FREE,
                "{what}: blocks were freed only at step {now}, the client left at step {steps}"
            );
            println!(
                "{what}: blocks freed {} steps after the disconnect",
                now - steps
            );
            break;
        }
        assert!(
            now <= steps + STEPS_TO_FREE,
            "{what}: {blocks} blocks still in use at step {now}, the client left at step {steps}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: never freed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.wait_metric("tessera_requests_running", 0.0, Duration::from_secs(5));
    let tokens = server.metric("tessera_generated_tokens_total");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.metric("tessera_generated_tokens_total"),
        tokens,
        "{what}: tokens are still being generated after the client left"
    );
}

#[test]
fn client_disconnect_cancels_the_request_and_frees_its_kv_blocks() {
    let server = Server::start(&[]);
    let addr = server.addr;

    // Mid-stream: after a few tokens.
    let mut stream = EventStream::open(
        addr,
        COMPLETIONS,
        &long_request(json!("Once upon a time"), 2000, true),
    );
    assert_eq!(stream.status, 200);
    for _ in 0..3 {
        assert!(stream.next_json().is_some());
    }
    stream.disconnect();
    assert_cancelled(&server, steps_now(&server), "mid-stream");

    // Before the first token: a long prompt is still in prefill when the client leaves.
    let before = server.metric("tessera_generated_tokens_total");
    let stream = EventStream::open(
        addr,
        COMPLETIONS,
        &long_request(json!(unique_prompt(PREFILL_TOKENS, 1)), 100, true),
    );
    assert_eq!(stream.status, 200);
    wait_blocks_in_use(&server);
    stream.disconnect();
    assert_cancelled(&server, steps_now(&server), "before the first token");
    assert_eq!(
        server.metric("tessera_generated_tokens_total"),
        before,
        "a token was generated for a request cancelled during its prefill"
    );

    // A whole (non-streaming) response being waited for.
    let before = server.metric("tessera_generated_tokens_total");
    let body = long_request(json!(unique_prompt(PREFILL_TOKENS, 2)), 100, false).to_string();
    let mut socket = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST {COMPLETIONS} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket.write_all((head + &body).as_bytes()).expect("send");
    wait_blocks_in_use(&server);
    drop(socket);
    assert_cancelled(&server, steps_now(&server), "non-streaming");
    assert_eq!(server.metric("tessera_generated_tokens_total"), before);
}

#[test]
fn sigterm_lets_in_flight_streams_finish_then_exits_zero() {
    let mut server = Server::start(&[]);
    let addr = server.addr;
    let body = json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 40,
                      "ignore_eos": true, "stream": true, "logprobs": 0});
    let mut stream = EventStream::open(addr, COMPLETIONS, &body);
    assert_eq!(stream.status, 200);
    let mut tokens = usize::from(stream.next_json().is_some());
    server.terminate();
    // New connections are refused soon after the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut finish = Value::Null;
    while let Some(chunk) = stream.next_json() {
        let choice = &chunk["choices"][0];
        if !choice["logprobs"].is_null() {
            tokens += 1;
        }
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
    }
    assert_eq!(
        finish, "length",
        "the in-flight stream did not finish normally"
    );
    assert_eq!(tokens, 40, "tokens streamed after SIGTERM");
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the server did not exit after draining");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn shutdown_timeout_ends_requests_that_run_past_it() {
    let mut server = Server::start(&["--shutdown-timeout", "1"]);
    let mut stream = EventStream::open(
        server.addr,
        COMPLETIONS,
        &long_request(json!("Hello"), 2000, true),
    );
    assert!(stream.next_json().is_some());
    let signalled = Instant::now();
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the server did not exit after its shutdown timeout");
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "exited before the timeout"
    );
    let mut chunks = 0;
    while stream.next_json().is_some() {
        chunks += 1;
    }
    assert!(
        chunks < 1999,
        "the 2000-token request ran to its end ({chunks} chunks)"
    );
}
