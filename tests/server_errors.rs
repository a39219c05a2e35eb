//! `tessera serve` answers every bad request with OpenAI's error shape
//! (`{"error": {message, type, param, code}}`) and the right status, and never panics:
//! malformed or mistyped bodies, unknown models, context overflows, out-of-range
//! parameters, oversized bodies, API keys and a full queue.

mod common;
#[path = "openai_client/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{error_of, post_json, request, send_raw, EventStream, Server, MODEL};
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";
const COMPLETIONS: &str = "/v1/completions";

/// A valid chat body with `extra` fields merged in.
fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 2,
    });
    merge(&mut body, extra);
    body
}

/// A valid completion body with `extra` fields merged in.
fn completion(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 2});
    merge(&mut body, extra);
    body
}

fn merge(body: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
}

/// What a case expects: status, error type, param (`None`: not checked).
struct Expect(u16, &'static str, Option<&'static str>);

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "a table of invalid requests, one entry per case, read top to bottom"
)]
fn every_invalid_request_gets_its_openai_status_and_error_type() {
    let server = Server::start(&[]);
    let addr = server.addr;
    // Over SmolLM2's 8192-token context (not just over a small KV pool).
    let long_ids: Vec<u32> = (0..9000u32).map(|i| 100 + i % 5000).collect();
    let long_text = "hello ".repeat(9000);
    let json_cases: Vec<(&str, &str, Value, Expect)> = vec![
        (
            "wrong type: temperature string",
            CHAT,
            chat(json!({"temperature": "hot"})),
            Expect(400, "invalid_request_error", Some("temperature")),
        ),
        (
            "wrong type: messages string",
            CHAT,
            chat(json!({"messages": "hi"})),
            Expect(400, "invalid_request_error", Some("messages")),
        ),
        (
            "wrong type: content number",
            CHAT,
            chat(json!({"messages": [{"role": "user", "content": 5}]})),
            Expect(400, "invalid_request_error", Some("messages[0].content")),
        ),
        (
            "wrong type: max_tokens negative",
            CHAT,
            chat(json!({"max_tokens": -3})),
            Expect(400, "invalid_request_error", Some("max_tokens")),
        ),
        (
            "wrong type: stream string",
            COMPLETIONS,
            completion(json!({"stream": "yes"})),
            Expect(400, "invalid_request_error", Some("stream")),
        ),
        (
            "missing model",
            CHAT,
            json!({"messages": [{"role": "user", "content": "x"}]}),
            Expect(400, "invalid_request_error", None),
        ),
        (
            "unknown model (chat)",
            CHAT,
            chat(json!({"model": "gpt-4o"})),
            Expect(404, "invalid_request_error", Some("model")),
        ),
        (
            "unknown model (completions)",
            COMPLETIONS,
            completion(json!({"model": "default"})),
            Expect(404, "invalid_request_error", Some("model")),
        ),
        (
            "max_tokens over the context",
            CHAT,
            chat(json!({"max_tokens": 100_000})),
            Expect(400, "invalid_request_error", Some("max_tokens")),
        ),
        (
            "max_completion_tokens over the context",
            CHAT,
            chat(json!({"max_completion_tokens": 9000})),
            Expect(400, "invalid_request_error", Some("max_tokens")),
        ),
        (
            "chat max_tokens zero (completions accept it: they may score the prompt)",
            CHAT,
            chat(json!({"max_tokens": 0})),
            Expect(400, "invalid_request_error", Some("max_tokens")),
        ),
        (
            "chat max_completion_tokens zero",
            CHAT,
            chat(json!({"max_completion_tokens": 0, "max_tokens": 5})),
            Expect(400, "invalid_request_error", Some("max_completion_tokens")),
        ),
        (
            "continue_final_message with add_generation_prompt",
            CHAT,
            chat(json!({"continue_final_message": true, "add_generation_prompt": true})),
            Expect(400, "invalid_request_error", Some("continue_final_message")),
        ),
        (
            "add_generation_prompt not a boolean",
            CHAT,
            chat(json!({"add_generation_prompt": "yes"})),
            Expect(400, "invalid_request_error", Some("add_generation_prompt")),
        ),
        (
            "prompt over the context with max_tokens zero",
            COMPLETIONS,
            completion(json!({"prompt": long_ids, "max_tokens": 0, "echo": true, "logprobs": 0})),
            Expect(400, "invalid_request_error", Some("prompt")),
        ),
        (
            "prompt ids over the context",
            COMPLETIONS,
            completion(json!({"prompt": long_ids, "max_tokens": 1})),
            Expect(400, "invalid_request_error", Some("prompt")),
        ),
        (
            "prompt text over the context",
            COMPLETIONS,
            completion(json!({"prompt": long_text, "max_tokens": 1})),
            Expect(400, "invalid_request_error", Some("prompt")),
        ),
        (
            "messages over the context",
            CHAT,
            chat(json!({"messages": [{"role": "user", "content": long_text}], "max_tokens": null})),
            Expect(400, "invalid_request_error", Some("messages")),
        ),
        (
            "prompt + max_tokens over the context",
            COMPLETIONS,
            completion(
                json!({"prompt": (0..5000).map(|i| 100 + i).collect::<Vec<u32>>(), "max_tokens": 4000}),
            ),
            Expect(400, "invalid_request_error", Some("max_tokens")),
        ),
        (
            "negative temperature",
            CHAT,
            chat(json!({"temperature": -0.5})),
            Expect(400, "invalid_request_error", Some("temperature")),
        ),
        (
            "infinite temperature",
            COMPLETIONS,
            completion(json!({"temperature": 1e300})),
            Expect(400, "invalid_request_error", Some("temperature")),
        ),
        (
            "n over the limit",
            CHAT,
            chat(json!({"n": 9})),
            Expect(400, "invalid_request_error", Some("n")),
        ),
        (
            "n zero",
            COMPLETIONS,
            completion(json!({"n": 0})),
            Expect(400, "invalid_request_error", Some("n")),
        ),
        (
            "top_p zero",
            CHAT,
            chat(json!({"top_p": 0})),
            Expect(400, "invalid_request_error", Some("top_p")),
        ),
        (
            "top_logprobs over 20",
            CHAT,
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            Expect(400, "invalid_request_error", Some("top_logprobs")),
        ),
        (
            "top_logprobs without logprobs",
            CHAT,
            chat(json!({"top_logprobs": 2})),
            Expect(400, "invalid_request_error", Some("top_logprobs")),
        ),
        (
            "completion logprobs over 20",
            COMPLETIONS,
            completion(json!({"logprobs": 21})),
            Expect(400, "invalid_request_error", Some("logprobs")),
        ),
        (
            "echo with logprobs over 20",
            COMPLETIONS,
            completion(json!({"echo": true, "logprobs": 21, "max_tokens": 0})),
            Expect(400, "invalid_request_error", Some("logprobs")),
        ),
        (
            "logit_bias key not a token id",
            CHAT,
            chat(json!({"logit_bias": {"hello": 5}})),
            Expect(400, "invalid_request_error", Some("logit_bias")),
        ),
        (
            "logit_bias token outside the vocabulary",
            CHAT,
            chat(json!({"logit_bias": {"999999": 5}})),
            Expect(400, "invalid_request_error", Some("logit_bias")),
        ),
        (
            "empty stop string",
            CHAT,
            chat(json!({"stop": ""})),
            Expect(400, "invalid_request_error", Some("stop")),
        ),
        (
            "presence_penalty out of range",
            CHAT,
            chat(json!({"presence_penalty": 3})),
            Expect(400, "invalid_request_error", Some("presence_penalty")),
        ),
        (
            "empty messages",
            CHAT,
            chat(json!({"messages": []})),
            Expect(400, "invalid_request_error", Some("messages")),
        ),
        (
            // `tool` is supported now (issue 12); the legacy `function` role is not.
            "unsupported role",
            CHAT,
            chat(json!({"messages": [{"role": "function", "content": "x"}]})),
            Expect(400, "invalid_request_error", Some("messages[0].role")),
        ),
        (
            "image content part",
            CHAT,
            chat(
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            ),
            Expect(400, "invalid_request_error", Some("messages[0].content[0]")),
        ),
        (
            "empty prompt list",
            COMPLETIONS,
            completion(json!({"prompt": []})),
            Expect(400, "invalid_request_error", Some("prompt")),
        ),
        (
            "prompt token outside the vocabulary",
            COMPLETIONS,
            completion(json!({"prompt": [1, 2, 4_000_000]})),
            Expect(400, "invalid_request_error", Some("prompt")),
        ),
        (
            "empty prompt text",
            COMPLETIONS,
            completion(json!({"prompt": ""})),
            Expect(400, "invalid_request_error", Some("prompt")),
        ),
        (
            "best_of above n",
            COMPLETIONS,
            completion(json!({"best_of": 3})),
            Expect(400, "invalid_request_error", Some("best_of")),
        ),
    ];
    let mut failures = Vec::new();
    for (name, path, body, Expect(status, kind, param)) in json_cases {
        let r = post_json(addr, path, &body);
        let (got_status, got_kind, got_param) = error_of(&r);
        let param_ok = param.is_none_or(|p| got_param == json!(p));
        if got_status != status || got_kind != kind || !param_ok {
            failures.push(format!(
                "{name}: got {got_status} {got_kind} param {got_param}, want {status} {kind} param {param:?}: {}",
                r.text()
            ));
        }
    }
    let raw_cases: Vec<(&str, &str, &str, Vec<u8>, Expect)> = vec![
        ("malformed JSON", "POST", CHAT, b"{\"model\": \"x\", ".to_vec(), Expect(400, "invalid_request_error", None)),
        ("NaN temperature (not JSON)", "POST", CHAT, format!("{{\"model\":\"{MODEL}\",\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}],\"temperature\":NaN}}").into_bytes(), Expect(400, "invalid_request_error", None)),
        ("body not an object", "POST", COMPLETIONS, b"[1, 2, 3]".to_vec(), Expect(400, "invalid_request_error", None)),
        ("empty body", "POST", CHAT, Vec::new(), Expect(400, "invalid_request_error", None)),
        ("invalid UTF-8", "POST", CHAT, [b"{\"model\":\"".as_slice(), &[0xff, 0xfe], b"\"}"].concat(), Expect(400, "invalid_request_error", None)),
        ("unknown endpoint", "POST", "/v1/embeddings", b"{}".to_vec(), Expect(404, "invalid_request_error", None)),
        ("wrong method", "GET", CHAT, Vec::new(), Expect(405, "invalid_request_error", None)),
        ("unknown model card", "GET", "/v1/models/other", Vec::new(), Expect(404, "invalid_request_error", Some("model"))),
    ];
    for (name, method, path, body, Expect(status, kind, param)) in raw_cases {
        let r = request(
            addr,
            method,
            path,
            &[("content-type", "application/json")],
            &body,
        );
        let (got_status, got_kind, got_param) = error_of(&r);
        let param_ok = param.is_none_or(|p| got_param == json!(p));
        if got_status != status || got_kind != kind || !param_ok {
            failures.push(format!(
                "{name}: got {got_status} {got_kind} {got_param}, want {status} {kind}: {}",
                r.text()
            ));
        }
    }
    // A body declared larger than 4 MiB is refused before it is read.
    let head = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        5 << 20
    );
    let r = send_raw(addr, head.as_bytes()).expect("413 response");
    if error_of(&r).0 != 413 || error_of(&r).1 != "invalid_request_error" {
        failures.push(format!("oversized body: got {} {}", r.status, r.text()));
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The server is still healthy, and unknown fields are ignored on a valid request.
    let ok = post_json(
        addr,
        CHAT,
        &chat(json!({"frobnicate": {"a": 1}, "user": "u1", "temperature": 0})),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["usage"]["completion_tokens"], 2);
    // Once refused, now accepted like OpenAI does: echo with logprobs scores the prompt,
    // and max_tokens 0 generates nothing.
    for extra in [
        json!({"echo": true, "logprobs": 1, "max_tokens": 0}),
        json!({"echo": true, "logprobs": 1}),
        json!({"max_tokens": 0}),
    ] {
        let r = post_json(addr, COMPLETIONS, &completion(extra.clone()));
        assert_eq!(r.status, 200, "{extra}: {}", r.text());
        let choice = &r.json()["choices"][0];
        let echoed = extra["echo"] == true;
        let text = choice["text"].as_str().unwrap_or_default();
        assert_eq!(text.starts_with("Hello"), echoed, "{extra}: {text:?}");
        if extra["max_tokens"] == 0 {
            assert_eq!(choice["finish_reason"], "length", "{extra}");
            assert_eq!(r.json()["usage"]["completion_tokens"], 0, "{extra}");
        }
    }
    assert_eq!(request(addr, "GET", "/health", &[], b"").status, 200);
}

#[test]
fn api_key_is_required_on_v1_but_not_on_health_and_metrics() {
    let server = Server::start(&["--api-key", "sekrit-123"]);
    let addr = server.addr;
    let body = chat(json!({})).to_string();
    let send = |auth: Option<&str>| {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = auth {
            headers.push(("authorization", a));
        }
        request(addr, "POST", CHAT, &headers, body.as_bytes())
    };
    for (name, auth) in [
        ("missing", None),
        ("wrong", Some("Bearer nope")),
        ("not bearer", Some("sekrit-123")),
    ] {
        let r = send(auth);
        let (status, kind, _) = error_of(&r);
        assert_eq!(
            (status, kind.as_str()),
            (401, "authentication_error"),
            "{name} key: {}",
            r.text()
        );
    }
    assert_eq!(send(Some("Bearer sekrit-123")).status, 200);
    let models = request(addr, "GET", "/v1/models", &[], b"");
    assert_eq!(error_of(&models).0, 401);
    assert_eq!(request(addr, "GET", "/health", &[], b"").status, 200);
    assert_eq!(request(addr, "GET", "/metrics", &[], b"").status, 200);
}

#[test]
fn full_queue_answers_429_with_retry_after_until_a_slot_frees() {
    let server = Server::start(&["--max-queue", "1"]);
    let addr = server.addr;
    let long = completion(json!({"max_tokens": 4000, "ignore_eos": true, "stream": true}));
    let mut stream = EventStream::open(addr, COMPLETIONS, &long);
    assert_eq!(stream.status, 200);
    assert!(stream.next_json().is_some(), "no first token");
    let r = post_json(addr, COMPLETIONS, &completion(json!({})));
    let (status, kind, _) = error_of(&r);
    assert_eq!(
        (status, kind.as_str()),
        (429, "rate_limit_error"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    // n larger than the whole queue can never run: 400, not 429.
    let r = post_json(addr, COMPLETIONS, &completion(json!({"n": 2})));
    assert_eq!(error_of(&r).0, 400, "{}", r.text());
    stream.disconnect();
    server.wait_metric("tessera_kv_blocks_used", 0.0, Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_json(addr, COMPLETIONS, &completion(json!({})));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.metric("tessera_requests_rejected_queue_full_total") >= 1.0);
}

#[test]
fn a_request_larger_than_the_whole_kv_pool_is_refused_with_400() {
    // 32 MiB of KV holds about 700 tokens of SmolLM2: a 2,000-token prompt fits the
    // context but could never be scheduled, so it is refused up front, not queued forever.
    let server = Server::start(&["--kv-cache-mib", "32"]);
    let ids: Vec<u32> = (0..2000u32).map(|i| 100 + i % 5000).collect();
    let r = post_json(
        server.addr,
        COMPLETIONS,
        &completion(json!({"prompt": ids, "max_tokens": 8})),
    );
    let (status, kind, _) = error_of(&r);
    assert_eq!(
        (status, kind.as_str()),
        (400, "invalid_request_error"),
        "{}",
        r.text()
    );
    // The server states the limit the KV pool sets (below the model's 8192).
    assert!(r.text().contains("720 tokens"), "{}", r.text());
    // A request that fits still runs.
    let r = post_json(
        server.addr,
        COMPLETIONS,
        &completion(json!({"max_tokens": 2})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
}
