//! Every kernel of `cuda/` compiles with NVRTC for sm_80 and sm_90 without an error or a
//! warning. Needs no GPU: NVRTC comes from the loader's path or from the pip wheel
//! `nvidia-cuda-nvrtc==13.0.88` (site-packages/nvidia/cu13/lib, found through python3).
//! Without NVRTC these tests say so on stderr and do nothing, except in CI (`CI=true`),
//! where a missing wheel fails them.

use tessera_cuda::nvrtc::{
    compile, compile_cubin, ensure_nvrtc, python_cuda_lib_dirs, Arch, KERNEL_FILES,
};

/// Whether NVRTC loads. Without it: a failure in CI (`CI=true`), else a note that `test`
/// did not run.
#[allow(
    clippy::disallowed_methods,
    reason = "a test harness, not a library, may read CI from the environment"
)]
fn nvrtc_or_not_run(test: &str) -> bool {
    let Err(e) = ensure_nvrtc(&python_cuda_lib_dirs()) else {
        return true;
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{test}: CI=true but NVRTC is missing ({e}); install nvidia-cuda-nvrtc==13.0.88"
    );
    eprintln!("NOT RUN {test}: {e}");
    false
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_without_warnings() {
    if !nvrtc_or_not_run("every_kernel_compiles_for_sm80_and_sm90_without_warnings") {
        return;
    }
    // Every file of cuda/ is in KERNEL_FILES, so none is left out of the binary.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cuda");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("cuda/ exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = KERNEL_FILES.iter().map(|(n, _)| n.to_string()).collect();
    embedded.sort();
    assert_eq!(on_disk, embedded, "cuda/*.cu and KERNEL_FILES differ");

    let mut failures = Vec::new();
    for arch in [Arch { major: 8, minor: 0 }, Arch { major: 9, minor: 0 }] {
        for (file, src) in KERNEL_FILES {
            match compile(file, src, arch) {
                Ok(c) if c.log.is_empty() && c.ptx.contains(".entry") => {}
                Ok(c) => failures.push(format!("{file} {}: warnings:\n{}", arch.target(), c.log)),
                Err(e) => failures.push(e.to_string()),
            }
            // Machine code too: the assembler checks inline PTX and reports spills.
            match compile_cubin(file, src, arch) {
                Ok(c) if c.log.is_empty() => {}
                Ok(c) => failures.push(format!(
                    "{file} sm_{}{}: warnings:\n{}",
                    arch.major, arch.minor, c.log
                )),
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every kernel name the op wrappers launch is an entry of the compiled kernels (a wrong
/// name would only fail on a GPU, at launch).
#[test]
fn every_launched_kernel_name_is_compiled() {
    if !nvrtc_or_not_run("every_launched_kernel_name_is_compiled") {
        return;
    }
    let arch = Arch { major: 9, minor: 0 };
    let ptx: String = KERNEL_FILES
        .iter()
        .map(|(file, src)| compile(file, src, arch).expect("compiles").ptx)
        .collect();
    let ops = [
        include_str!("../src/ops/mod.rs"),
        include_str!("../src/ops/attention.rs"),
        include_str!("../src/ops/decode.rs"),
        include_str!("../src/ops/sampling.rs"),
    ];
    let names: Vec<&str> = ops
        .iter()
        .flat_map(|src| src.split('"').skip(1).step_by(2))
        .filter(|s| {
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && (s.ends_with("_f32") || s.ends_with("_bf16") || s.ends_with("_f16"))
        })
        .collect();
    assert!(names.len() >= 15, "found only {names:?} in src/ops/");
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !ptx.contains(&format!(".entry {n}(")))
        .collect();
    assert!(missing.is_empty(), "launched but not compiled: {missing:?}");
}

#[test]
fn a_kernel_with_an_error_or_a_warning_is_reported() {
    if !nvrtc_or_not_run("a_kernel_with_an_error_or_a_warning_is_reported") {
        return;
    }
    let arch = Arch { major: 9, minor: 0 };
    let bad = compile(
        "bad.cu",
        "extern \"C\" __global__ void k(float* x) { x[0] = y; }",
        arch,
    );
    assert!(bad.is_err(), "an undefined name must fail");
    let warn = compile(
        "warn.cu",
        "extern \"C\" __global__ void k(float* x) { int unused = 3; x[0] = 1.0f; }",
        arch,
    )
    .expect("compiles");
    assert!(!warn.log.is_empty(), "an unused variable must warn");
    // Bad inline PTX passes the front end; only the assembler (cubin) rejects it.
    let asm = "extern \"C\" __global__ void k(int* x) { int v; asm(\"not.an.instruction %0;\" : \"=r\"(v)); x[0] = v; }";
    assert!(compile("asm.cu", asm, arch).is_ok(), "PTX is not assembled");
    assert!(
        compile_cubin("asm.cu", asm, arch).is_err(),
        "the assembler must reject it"
    );
}
