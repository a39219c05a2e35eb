//! `tessera serve --nodes 2`: node 0 runs the engine and the server, node 1 (another
//! process) runs its ranks and follows over TCP. On CPU the ranks cannot meet in a
//! collective across processes, so the plan is `replicated`; what is tested is the node
//! protocol end to end: the rendezvous, set-up and step forwarding, that the output equals
//! one process's, that a following node exits 0 when node 0 stops, and the refusals.

mod common;
#[path = "openai_client/harness.rs"]
mod harness;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{request, Server, MODEL};
use serde_json::{json, Value};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn completion(server: &Server, prompt: &str) -> Value {
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0});
    let r = request(
        server.addr,
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn two_nodes_serve_the_same_tokens_as_one_and_the_follower_exits_with_node_0() {
    let master = format!("127.0.0.1:{}", free_port());
    let model = common::default_model().to_str().unwrap().to_string();
    let node_args = [
        "--tp",
        "2",
        "--strategy",
        "replicated",
        "--nodes",
        "2",
        "--master",
        &master,
        "--threads",
        "1",
        "--kv-cache-mib",
        "64",
    ];
    let mut follower = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env("RUST_LOG", "warn")
        .args(["serve", "--model", &model, "--node-rank", "1"])
        .args(node_args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the following node starts");
    let mut args = vec!["--node-rank", "0"];
    args.extend(node_args);
    let mut two = Server::start(&args);
    let prompts = ["The capital of France is", "def fibonacci(n):"];
    let got: Vec<Value> = prompts.iter().map(|p| completion(&two, p)).collect();
    two.terminate();
    let status = two
        .wait_exit(Duration::from_secs(30))
        .expect("node 0 exits");
    assert!(status.success(), "node 0: {status:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let follower_status = loop {
        if let Some(s) = follower.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = follower.kill();
            panic!("the following node did not exit after node 0 stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(follower_status.success(), "node 1: {follower_status:?}");

    let one = Server::start(&["--threads", "1", "--kv-cache-mib", "64"]);
    for (prompt, two_nodes) in prompts.iter().zip(&got) {
        let one_node = completion(&one, prompt);
        assert_eq!(
            two_nodes["choices"][0]["text"], one_node["choices"][0]["text"],
            "{prompt:?}"
        );
        assert_eq!(two_nodes["usage"], one_node["usage"], "{prompt:?}");
        assert!(
            !one_node["choices"][0]["text"].as_str().unwrap().is_empty(),
            "{prompt:?}"
        );
    }
}

#[test]
fn node_flags_are_checked_before_anything_loads() {
    let model = common::default_model().to_str().unwrap().to_string();
    let master = format!("127.0.0.1:{}", free_port());
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--tp",
                "2",
                "--nodes",
                "2",
                "--node-rank",
                "1",
                "--master",
                &master,
            ],
            "cannot run collectives",
        ),
        (&["--tp", "2", "--nodes", "2"], "needs --master"),
        (
            &[
                "--tp",
                "2",
                "--nodes",
                "2",
                "--node-rank",
                "2",
                "--master",
                &master,
            ],
            "is not below --nodes 2",
        ),
        (
            &["--tp", "1", "--nodes", "2", "--master", &master],
            "every node needs at least one rank",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["serve", "--model", &model];
        args.extend(extra);
        let out = common::run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} succeeded");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}

#[test]
fn node_0_names_the_ranks_that_never_came() {
    let model = common::default_model().to_str().unwrap().to_string();
    let master = format!("127.0.0.1:{}", free_port());
    let out = common::run(&[
        "serve",
        "--model",
        &model,
        "--tp",
        "3",
        "--strategy",
        "replicated",
        "--nodes",
        "2",
        "--master",
        &master,
        "--node-timeout",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("ranks 2 did not arrive"), "{stderr}");
}
