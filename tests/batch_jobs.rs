//! `tessera batch` end to end on a tiny random model with the real tokenizer: both input
//! formats, map-reduce over long documents, resume after SIGKILL, per-line errors and
//! duplicate ids.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_plan::ModelShape;

/// A 1-layer random model with SmolLM2's vocabulary and its tokenizer files (fast, real text).
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny-batch");
    let shape = ModelShape {
        hidden: 32,
        layers: 1,
        heads: 2,
        kv_heads: 1,
        head_dim: 16,
        intermediate: 64,
        vocab: 49152,
        tied_embeddings: true,
        qkv_bias: false,
    };
    tessera_model::synthetic::write_random_model(&model, &shape, 3, 512).unwrap();
    let real = common::default_model();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(real.join(f), model.join(f)).unwrap();
    }
    model
}

fn fixture_text() -> String {
    std::fs::read_to_string(common::root().join("tests/fixtures/batch/river_town.txt")).unwrap()
}

fn batch(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Command {
    let mut c = common::tessera();
    c.arg("batch")
        .arg("--model")
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args([
            "--threads",
            "1",
            "--max-context",
            "256",
            "--max-tokens",
            "6",
        ])
        .args(extra);
    c
}

fn run_ok(mut c: Command) -> Value {
    let out: Output = c.output().unwrap();
    assert!(
        out.status.success(),
        "tessera batch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn write_lines(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn read_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "torn last line");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("every output line is whole JSON"))
        .collect()
}

fn answered(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let id = l.get("custom_id").unwrap_or(&l["id"]);
            id.as_str().map_or_else(|| id.to_string(), str::to_string)
        })
        .collect()
}

/// Documents of mixed lengths: every 5th is 1.5-3 times a 256-token context.
fn mixed_documents(n: usize) -> Vec<Value> {
    let text = fixture_text();
    let paragraphs: Vec<&str> = text.split("\n\n").collect();
    (0..n)
        .map(|i| {
            let body = if i % 5 == 0 {
                format!("{text}\n\n{}", paragraphs[..1 + i % 6].join("\n\n"))
            } else {
                paragraphs[i % paragraphs.len()].to_string()
            };
            json!({"id": format!("doc-{i}"), "text": body})
        })
        .collect()
}

#[test]
fn openai_lines_and_documents_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("in.jsonl");
    let output = tmp.path().join("out.jsonl");
    write_lines(
        &input,
        &[
            json!({"custom_id": "chat-1", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5, "temperature": 0}}),
            json!({"custom_id": "text-1", "method": "POST", "url": "/v1/completions",
                   "body": {"model": "tiny-batch", "prompt": "The river", "max_tokens": 4}}),
            json!({"custom_id": "bad-model", "method": "POST", "url": "/v1/completions",
                   "body": {"model": "gpt-4o", "prompt": "x", "max_tokens": 4}}),
            json!({"id": "doc-a", "text": "A short note about the mill and the river."}),
            json!({"id": 42, "text": fixture_text()}),
        ],
    );
    let summary = run_ok(batch(&model, &input, &output, &["--task", "summarize"]));
    assert_eq!(summary["done"], 4, "{summary}");
    assert_eq!(summary["failed"], 1, "{summary}");
    let lines = read_lines(&output);
    let ids = answered(&lines);
    let by_id = |id: &str| {
        let at = ids.iter().position(|a| a == id);
        lines[at.unwrap_or_else(|| panic!("{id} answered"))].clone()
    };
    let chat = by_id("chat-1");
    assert_eq!(chat["response"]["status_code"], 200);
    assert_eq!(chat["response"]["body"]["object"], "chat.completion");
    assert!(chat["response"]["body"]["choices"][0]["message"]["content"].is_string());
    assert!(chat["error"].is_null());
    let text = by_id("text-1");
    assert_eq!(text["response"]["body"]["object"], "text_completion");
    assert!(
        text["response"]["body"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap()
            <= 4
    );
    let doc = by_id("doc-a");
    assert!(doc["summary"].is_string());
    assert!(doc["usage"]["completion_tokens"].as_u64().unwrap() <= 6);
    assert_eq!(doc["usage"]["requests"], 1);
    // The fixture is ~2x the 256-token context: map-reduce made several requests.
    assert!(by_id("42")["usage"]["requests"].as_u64().unwrap() >= 3);
    let errors = read_lines(&tmp.path().join("out.errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["line"], 3);
    assert_eq!(errors[0]["response"]["status_code"], 404);
}

#[test]
fn two_hundred_mixed_documents_are_each_answered_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("docs.jsonl");
    let output = tmp.path().join("out.jsonl");
    write_lines(&input, &mixed_documents(200));
    let started = Instant::now();
    let summary = run_ok(batch(&model, &input, &output, &["--task", "summarize"]));
    eprintln!("200 documents in {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(summary["done"], 200, "{summary}");
    let ids = answered(&read_lines(&output));
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), 200);
    assert_eq!(unique, (0..200).map(|i| format!("doc-{i}")).collect());
    // A rerun answers nothing twice.
    let again = run_ok(batch(&model, &input, &output, &["--task", "summarize"]));
    assert_eq!(
        (again["done"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(200))
    );
    assert_eq!(read_lines(&output).len(), 200);
}

#[test]
fn map_reduce_handles_a_document_five_times_the_context_and_policies_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("long.jsonl");
    let long = [fixture_text(), fixture_text(), fixture_text()].join("\n\n");
    write_lines(&input, &[json!({"id": "long", "text": long})]);
    let run = |policy: &str| {
        let output = tmp.path().join(format!("{policy}.jsonl"));
        let summary = run_ok(batch(
            &model,
            &input,
            &output,
            &["--task", "summarize", "--on-overflow", policy],
        ));
        (
            summary,
            read_lines(&output),
            read_lines(&tmp.path().join(format!("{policy}.errors.jsonl"))),
        )
    };
    let (_, lines, _) = run("map-reduce");
    assert_eq!(lines.len(), 1);
    let requests = lines[0]["usage"]["requests"].as_u64().unwrap();
    assert!(
        requests >= 6,
        "5+ chunk summaries and a reduce, got {requests}"
    );
    let (_, lines, _) = run("truncate");
    assert_eq!(lines[0]["usage"]["requests"], 1);
    assert!(lines[0]["usage"]["prompt_tokens"].as_u64().unwrap() <= 250);
    let (summary, lines, errors) = run("error");
    assert!(lines.is_empty());
    assert_eq!(summary["failed"], 1);
    assert_eq!(errors[0]["line"], 1);
    assert!(errors[0]["reason"].as_str().unwrap().contains("context"));
}

#[test]
fn runs_killed_at_three_points_resume_to_the_same_ids_without_duplicates_or_torn_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("docs.jsonl");
    let output = tmp.path().join("out.jsonl");
    let docs = mixed_documents(120);
    write_lines(&input, &docs);
    // Kill once the output holds at least k lines, plus a pseudo-random few milliseconds.
    for (k, jitter_ms) in [(5usize, 3u64), (40, 17), (80, 9)] {
        let mut child = batch(
            &model,
            &input,
            &output,
            &["--task", "summarize", "--max-concurrency", "16"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n = std::fs::read_to_string(&output).map_or(0, |t| t.lines().count());
            if n >= k || Instant::now() > deadline {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(jitter_ms));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
    }
    let before = std::fs::read_to_string(&output).unwrap().lines().count();
    eprintln!("after 3 kills: {before} of 120 lines written");
    // And a kill mid-write: a torn last line is cut away on the rerun.
    let mut torn = std::fs::read_to_string(&output).unwrap();
    torn.push_str("{\"id\":\"doc-119\",\"summ");
    std::fs::write(&output, torn).unwrap();
    let summary = run_ok(batch(&model, &input, &output, &["--task", "summarize"]));
    assert!(summary["skipped"].as_u64().unwrap() >= 80, "{summary}");
    assert_eq!(
        summary["skipped"].as_u64().unwrap() + summary["done"].as_u64().unwrap(),
        120
    );
    let ids = answered(&read_lines(&output));
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "no id answered twice");
    assert_eq!(unique, answered(&docs).into_iter().collect());
}

#[test]
fn malformed_lines_go_to_the_errors_file_with_line_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("in.jsonl");
    let output = tmp.path().join("out.jsonl");
    let errors = tmp.path().join("bad.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": \"ok-1\", \"text\": \"Fine.\"}\n",
            "{not json\n",
            "[1, 2]\n",
            "{\"custom_id\": \"c\", \"method\": \"POST\", \"url\": \"/v1/embeddings\", \"body\": {}}\n",
            "{\"custom_id\": \"t\", \"method\": \"POST\", \"url\": \"/v1/completions\", \"body\": {\"prompt\": \"x\", \"temperature\": -3}}\n",
            "{\"id\": \"ok-2\", \"text\": \"Also fine.\"}\n",
        ),
    )
    .unwrap();
    let summary = run_ok(batch(
        &model,
        &input,
        &output,
        &["--task", "summarize", "--errors", errors.to_str().unwrap()],
    ));
    assert_eq!(
        (summary["done"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(4))
    );
    let mut lines: Vec<u64> = read_lines(&errors)
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    lines.sort();
    assert_eq!(lines, vec![2, 3, 4, 5]);
    let mut ok = answered(&read_lines(&output));
    ok.sort();
    assert_eq!(ok, vec!["ok-1", "ok-2"]);
}

#[test]
fn duplicate_ids_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let output = tmp.path().join("out.jsonl");
    write_lines(
        &input,
        &[
            json!({"id": "a", "text": "x"}),
            json!({"id": "b", "text": "y"}),
            json!({"id": "a", "text": "z"}),
        ],
    );
    // A model directory that does not exist: the input is refused before any model loads.
    let out = batch(
        &tmp.path().join("no-model"),
        &input,
        &output,
        &["--task", "summarize"],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("duplicate id \"a\" on input lines 1 and 3"),
        "{stderr}"
    );
    assert!(!output.exists());
}

#[test]
fn ordered_output_follows_input_order() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("docs.jsonl");
    let output = tmp.path().join("out.jsonl");
    let docs = mixed_documents(30);
    write_lines(&input, &docs);
    run_ok(batch(
        &model,
        &input,
        &output,
        &["--task", "summarize", "--ordered"],
    ));
    assert_eq!(answered(&read_lines(&output)), answered(&docs));
}

#[test]
fn sigterm_finishes_in_flight_lines_and_a_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("docs.jsonl");
    let output = tmp.path().join("out.jsonl");
    let docs = mixed_documents(150);
    write_lines(&input, &docs);
    let child = batch(
        &model,
        &input,
        &output,
        &["--task", "summarize", "--max-concurrency", "8"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&output).map_or(0, |t| t.lines().count()) < 10
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "a stop signal is a clean exit");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let written = read_lines(&output).len() as u64;
    eprintln!("after SIGTERM: {summary}");
    assert_eq!(summary["done"].as_u64(), Some(written));
    if written < 150 {
        assert_eq!(summary["interrupted"], true, "{summary}");
    }
    let rest = run_ok(batch(&model, &input, &output, &["--task", "summarize"]));
    assert_eq!(rest["skipped"].as_u64(), Some(written));
    let ids = answered(&read_lines(&output));
    assert_eq!(ids.len(), 150);
    assert_eq!(
        ids.into_iter().collect::<HashSet<_>>(),
        answered(&docs).into_iter().collect()
    );
}
