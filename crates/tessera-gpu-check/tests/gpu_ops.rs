//! Each kernel of `cuda/` against its CPU reference on the GPU (see `opcheck`). Ignored
//! by default (`cargo test -- --ignored` on a GPU machine runs them; there, a missing GPU
//! fails them). Without a GPU, `tessera-cuda-emu` runs the same kernels on the CPU.

use tessera_cuda::{nvrtc::python_cuda_lib_dirs, Gpu, GpuOptions};
use tessera_gpu_check::opcheck::{check_op, Op};

fn gpu(test: &str) -> Gpu {
    let options = GpuOptions {
        lib_dirs: python_cuda_lib_dirs(),
        ptx_cache: None,
    };
    match Gpu::new(0, &options) {
        Ok(g) => g,
        Err(e) => panic!("{test}: needs a usable NVIDIA GPU: {e}"),
    }
}

fn run(test: &str, op: Op) {
    let gpu = gpu(test);
    for seed in [1, 2] {
        let reports = check_op(&gpu, op, seed).expect("the op runs");
        assert!(!reports.is_empty());
        for r in &reports {
            assert!(r.passed, "{test} seed {seed}: {r:?}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_matches_f64_reference_in_f32_bf16_f16() {
    run("gemm", Op::Gemm);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn rms_norm_matches_cpu() {
    run("rms_norm", Op::RmsNorm);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn add_rms_norm_matches_cpu() {
    run("add_rms_norm", Op::AddRmsNorm);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn rope_with_llama3_scaling_matches_cpu() {
    run("rope", Op::Rope);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn silu_mul_matches_cpu() {
    run("silu_mul", Op::SiluMul);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn embedding_gathers_only_the_ranks_vocab_span() {
    run("embedding", Op::Embedding);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn paged_attention_decode_matches_cpu() {
    run("paged_attention_decode", Op::AttentionDecode);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn paged_attention_prefill_matches_cpu() {
    run("paged_attention_prefill", Op::AttentionPrefill);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn argmax_matches_cpu() {
    run("argmax", Op::Argmax);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn sampling_matches_cpu_rule() {
    run("sample", Op::Sample);
}
