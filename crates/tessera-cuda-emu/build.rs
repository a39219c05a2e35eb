//! Compiles every `cuda/*.cu` as C++ (one unit per file, `cuda/common.cuh` first, as
//! NVRTC sees it) against `emu/cuda_emu.h`, plus the fiber runtime. No `-march`: the
//! objects run on any x86-64 (AVX2 and AVX-512 machines alike).

use std::fs;
use std::path::PathBuf;

#[allow(
    clippy::disallowed_methods,
    reason = "cargo hands a build script its inputs in the environment"
)]
fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let cuda = manifest.join("../../cuda");
    let emu = manifest.join("emu");
    println!("cargo:rerun-if-changed={}", cuda.display());
    println!("cargo:rerun-if-changed={}", emu.display());
    let mut files: Vec<PathBuf> = fs::read_dir(&cuda)
        .expect("cuda/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .include(&emu)
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-function")
        .flag_if_supported("-Wno-sign-compare")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-fno-fast-math")
        .file(emu.join("runtime.cpp"))
        .file(emu.join("selftest.cpp"));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let stem = f.file_stem().expect("a .cu file").to_string_lossy();
        let unit = out.join(format!("emu_{stem}.cpp"));
        let text = format!(
            "#include \"cuda_emu.h\"\n#include \"{}\"\n#include \"{}\"\n",
            cuda.join("common.cuh").display(),
            f.display()
        );
        fs::write(&unit, text).expect("OUT_DIR is writable");
        build.file(unit);
    }
    build.compile("tessera_cuda_emu");
}
