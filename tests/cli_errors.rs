//! Bad input to the CLI is a clear error (non-zero exit, a message naming the problem), never a panic.

mod common;

use std::path::Path;

/// A model directory with the real tokenizer and an edited config; `weights` says what
/// `model.safetensors` is.
fn model_dir(
    tmp: &Path,
    edit_config: impl Fn(&mut serde_json::Value),
    weights: Weights,
) -> std::path::PathBuf {
    let real = common::default_model();
    let dir = tmp.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(real.join(f), dir.join(f)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(real.join("config.json")).unwrap()).unwrap();
    edit_config(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let st = real.join("model.safetensors");
    match weights {
        Weights::Missing => {}
        Weights::Linked => std::os::unix::fs::symlink(&st, dir.join("model.safetensors")).unwrap(),
        Weights::Truncated => {
            let bytes = std::fs::read(&st).unwrap();
            std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
        }
    }
    dir
}

enum Weights {
    Missing,
    Linked,
    Truncated,
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let out = common::run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure for {args:?}, got success"
    );
    assert!(
        !stderr.contains("panicked"),
        "panicked for {args:?}: {stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "stderr for {args:?} lacks '{n}':\n{stderr}"
        );
    }
    assert!(
        out.stdout.is_empty(),
        "stdout must stay empty on error: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn missing_safetensors_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), |_| {}, Weights::Missing);
    fails_with(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "hi",
            "--json",
        ],
        &["model.safetensors"],
    );
}

#[test]
fn truncated_safetensors_file_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(tmp.path(), |_| {}, Weights::Truncated);
    fails_with(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["truncated"],
    );
}

#[test]
fn unknown_architecture_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(
        tmp.path(),
        |c| c["architectures"] = serde_json::json!(["MambaForCausalLM"]),
        Weights::Linked,
    );
    fails_with(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["MambaForCausalLM", "not supported"],
    );
}

#[test]
fn prompt_longer_than_the_context_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = model_dir(
        tmp.path(),
        |c| c["max_position_embeddings"] = serde_json::json!(8),
        Weights::Linked,
    );
    let prompt = "one two three four five six seven eight nine ten eleven";
    fails_with(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            prompt,
        ],
        &["context"],
    );
}

#[test]
fn zero_ranks_is_reported() {
    let model = common::default_model().to_str().unwrap().to_string();
    fails_with(
        &["generate", "--model", &model, "--tp", "0", "--prompt", "hi"],
        &["--tp"],
    );
    fails_with(&["plan", "--model", &model, "--tp", "0"], &["at least 1"]);
}

#[test]
fn overlapping_plan_ranges_name_the_weight_and_the_rank() {
    let model = common::default_model().to_str().unwrap().to_string();
    let out = common::run(&["plan", "--model", &model, "--tp", "2", "--json"]);
    let mut plan = common::json_stdout(&out);
    plan["layers"][7]["mlp"]["spans"] =
        serde_json::json!([{"start": 0, "end": 800}, {"start": 700, "end": 1536}]);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("plan.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    fails_with(
        &[
            "generate",
            "--model",
            &model,
            "--plan",
            path.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["model.layers.7.mlp", "rank 1", "overlap"],
    );
}

#[test]
fn plan_with_a_gap_is_reported() {
    let model = common::default_model().to_str().unwrap().to_string();
    let mut plan = common::json_stdout(&common::run(&[
        "plan", "--model", &model, "--tp", "3", "--json",
    ]));
    plan["lm_head"]["spans"][1]["start"] = serde_json::json!(16390);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("plan.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    fails_with(
        &[
            "generate",
            "--model",
            &model,
            "--plan",
            path.to_str().unwrap(),
            "--prompt",
            "hi",
        ],
        &["lm_head", "rank 1"],
    );
}

/// Every command that runs the model takes `--device cuda` (serve, batch and bench
/// throughput through the engine's CUDA ranks), so each must give the same clear error
/// when CUDA is missing.
fn cuda_commands(model: &str, input: &str) -> Vec<Vec<String>> {
    let output = format!("{input}.out");
    let lines: [&[&str]; 5] = [
        &["generate", "--prompt", "hi"],
        &["generate", "--prompt", "hi", "--tp", "2"],
        &["serve", "--port", "0"],
        &["batch", "--input", input, "--output", &output],
        &["bench", "throughput", "--requests", "1"],
    ];
    lines
        .iter()
        .map(|l| {
            let mut v: Vec<String> = l.iter().map(|s| s.to_string()).collect();
            v.extend(["--model", model, "--device", "cuda"].map(String::from));
            v
        })
        .collect()
}

fn cuda_input() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"id\": \"a\", \"text\": \"hi\"}\n",
    )
    .unwrap();
    dir
}

#[test]
#[cfg(not(feature = "cuda"))]
fn cuda_device_in_a_cpu_build_is_reported() {
    let model = common::default_model().to_str().unwrap().to_string();
    let input = cuda_input();
    let path = input.path().join("in.jsonl");
    for args in cuda_commands(&model, path.to_str().unwrap()) {
        fails_with(&as_refs(&args), &["without CUDA"]);
    }
}

#[test]
#[cfg(feature = "cuda")]
fn cuda_device_without_a_driver_is_reported() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!(
            "SKIPPED cuda_device_without_a_driver_is_reported: this machine has an NVIDIA driver"
        );
        return;
    }
    let model = common::default_model().to_str().unwrap().to_string();
    let input = cuda_input();
    let path = input.path().join("in.jsonl");
    for args in cuda_commands(&model, path.to_str().unwrap()) {
        fails_with(
            &as_refs(&args),
            &["built with CUDA but no CUDA driver found"],
        );
    }
}

#[test]
fn unknown_dtype_and_strategy_are_reported() {
    let model = common::default_model().to_str().unwrap().to_string();
    fails_with(
        &[
            "generate", "--model", &model, "--dtype", "int3", "--prompt", "hi",
        ],
        &["int3"],
    );
    fails_with(
        &[
            "plan",
            "--model",
            &model,
            "--tp",
            "2",
            "--strategy",
            "zigzag",
        ],
        &["zigzag", "megatron"],
    );
}

#[test]
fn plan_json_prints_only_json_and_the_table_names_every_rank() {
    let model = common::default_model().to_str().unwrap().to_string();
    let plan = common::json_stdout(&common::run(&[
        "plan", "--model", &model, "--tp", "3", "--json",
    ]));
    assert_eq!(plan["world_size"], 3);
    let out = common::run(&["plan", "--model", &model, "--tp", "2"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table.contains("0..5 (5)") && table.contains("5..9 (4)"),
        "head split 5+4 expected:\n{table}"
    );
    assert!(table.contains("all-reduce"), "{table}");
    // Bytes each rank contributes per token: two f32 all-reduces of the 576-wide hidden
    // state per layer; per step also the embedding's all-reduce and the 49152-wide gather.
    assert!(
        table.contains("4608 per layer, 337152 per step"),
        "collective bytes per token expected:\n{table}"
    );
}

#[test]
fn saved_plan_runs_and_fixes_the_rank_count() {
    let model = common::default_model().to_str().unwrap().to_string();
    let out = common::run(&["plan", "--model", &model, "--tp", "3", "--json"]);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("plan.json");
    std::fs::write(&path, &out.stdout).unwrap();
    let got = common::json_stdout(&common::run(&[
        "generate",
        "--model",
        &model,
        "--plan",
        path.to_str().unwrap(),
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "3",
        "--json",
    ]));
    assert_eq!(got["tp"], 3);
    assert_eq!(got["completion_ids"], serde_json::json!([7042, 30, 198]));
}

#[test]
fn a_hand_cut_inside_a_reduction_chunk_is_refused_unless_fast_reduce() {
    let model = common::default_model().to_str().unwrap().to_string();
    let out = common::run(&["plan", "--model", &model, "--tp", "2", "--json"]);
    let mut plan = common::json_stdout(&out);
    plan["layers"][4]["mlp"]["spans"] =
        serde_json::json!([{"start": 0, "end": 700}, {"start": 700, "end": 1536}]);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("plan.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    let path = path.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        &model,
        "--plan",
        path,
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "3",
        "--json",
    ];
    fails_with(
        &args,
        &["model.layers.4.mlp", "rank 1", "700", "--fast-reduce"],
    );
    let mut fast = args.to_vec();
    fast.push("--fast-reduce");
    let got = common::json_stdout(&common::run(&fast));
    assert_eq!(got["completion_ids"], serde_json::json!([7042, 30, 198]));
}

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn rank_memory_is_checked() {
    let model = common::default_model().to_str().unwrap().to_string();
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--model", model.as_str()];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    fails_with(
        &as_refs(&plan(&["--rank-memory", "80G,40G"])),
        &["only applies to --strategy memory-balanced"],
    );
    fails_with(
        &as_refs(&plan(&[
            "--strategy",
            "memory-balanced",
            "--rank-memory",
            "80G,lots",
        ])),
        &["--rank-memory", "lots"],
    );
    fails_with(
        &as_refs(&plan(&[
            "--strategy",
            "memory-balanced",
            "--rank-memory",
            "80G,0G",
        ])),
        &["not a positive size"],
    );
    fails_with(
        &as_refs(&plan(&[
            "--strategy",
            "memory-balanced",
            "--tp",
            "3",
            "--rank-memory",
            "80G,40G",
        ])),
        &["--tp 3", "2 ranks"],
    );
    let out = common::run(&as_refs(&plan(&[
        "--strategy",
        "memory-balanced",
        "--rank-memory",
        "80G,40G",
        "--json",
    ])));
    let p = common::json_stdout(&out);
    assert_eq!(p["world_size"], 2);
    let heads = &p["layers"][0]["attention"]["ranks"];
    let h0 = heads[0]["q_heads"]["end"].as_u64().unwrap();
    assert_eq!(h0, 6, "80G:40G gives rank 0 two thirds of 9 heads: {heads}");
}
