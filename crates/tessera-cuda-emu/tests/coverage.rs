//! Every kernel of `cuda/` is exercised by an emulation test (a new kernel without one
//! fails here).

use std::path::Path;

#[test]
fn every_kernel_of_cuda_runs_in_an_emulation_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut kernels = Vec::new();
    for entry in std::fs::read_dir(root.join("../../cuda")).expect("cuda/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("readable");
        for part in src.split("extern \"C\" __global__").skip(1) {
            // `void [__launch_bounds__(..)] name(`
            let head = part.split('(').next().unwrap_or("");
            let head = if head.contains("__launch_bounds__") {
                part.split(')')
                    .nth(1)
                    .unwrap_or("")
                    .split('(')
                    .next()
                    .unwrap_or("")
            } else {
                head
            };
            kernels.push(head.split_whitespace().last().unwrap_or("").to_string());
        }
    }
    assert!(kernels.len() >= 20, "found {kernels:?}");
    let mut tests = String::new();
    for entry in std::fs::read_dir(root.join("tests")).expect("tests/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("coverage.rs") {
            tests.push_str(&std::fs::read_to_string(&path).expect("readable"));
        }
    }
    let missing: Vec<&String> = kernels
        .iter()
        .filter(|k| !tests.contains(&format!("k::{k}(")))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels no emulation test launches: {missing:?}"
    );
}
