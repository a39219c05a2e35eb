//! `tessera plan --explain`: the cost model from the command line, without weights.

mod common;

use common::run as tessera;

#[test]
fn explain_json_for_llama3_8b_on_four_h200_has_every_rank_and_collective_bytes() {
    let out = tessera(&[
        "plan",
        "--shape",
        "llama3-8b",
        "--tp",
        "4",
        "--explain",
        "--json",
        "--hardware",
        "h200-nvlink",
        "--bytes-per-param",
        "2",
        "--batch",
        "8",
        "--fast-reduce",
    ]);
    let v = common::json_stdout(&out);
    assert_eq!(v["world"], 4);
    assert_eq!(v["reduce"], "fast");
    assert_eq!(v["ranks"].as_array().unwrap().len(), 4);
    // 8 tokens: embedding + 32 x 2 all-reduces of 4096 f32, plus 8 rows x 32064 logits.
    let expect = (65 * 8 * 4096 + 8 * 32064) * 4;
    assert_eq!(v["comm_bytes_per_rank"][0], expect);
    assert!(v["step_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn explain_table_reads_a_toml_hardware_profile() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.toml");
    std::fs::write(
        &path,
        "name = \"toy\"\nflops_per_s = 1e12\nmemory_bytes_per_s = 1e11\nlink_bytes_per_s = 1e10\ncollective_latency_s = 1e-5\n",
    )
    .unwrap();
    let out = tessera(&[
        "plan",
        "--shape",
        "smollm2-135m",
        "--tp",
        "2",
        "--explain",
        "--hardware",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hardware toy"), "{text}");
    for name in ["attention", "mlp", "lm_head", "embedding", "total"] {
        assert!(text.contains(name), "{text}");
    }
}

#[test]
fn unknown_hardware_names_the_built_in_profiles() {
    let out = tessera(&[
        "plan",
        "--shape",
        "smollm2-135m",
        "--tp",
        "2",
        "--explain",
        "--hardware",
        "tpu-v9",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown hardware 'tpu-v9'") && err.contains("h200-nvlink"),
        "{err}"
    );
}
