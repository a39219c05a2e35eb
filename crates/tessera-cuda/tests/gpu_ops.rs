//! Each kernel of `cuda/` against its CPU reference on the GPU (see `opcheck`). Skipped,
//! with a message on stderr, on a machine without a CUDA driver or GPU.

use tessera_cuda::opcheck::{check_op, Op};
use tessera_cuda::{nvrtc::python_cuda_lib_dirs, CudaError, Gpu, GpuOptions};

fn gpu_or_skip(test: &str) -> Option<Gpu> {
    let options = GpuOptions {
        lib_dirs: python_cuda_lib_dirs(),
        ptx_cache: None,
    };
    match Gpu::new(0, &options) {
        Ok(g) => Some(g),
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice(_))) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: a GPU is present but could not be set up: {e}"),
    }
}

fn run(test: &str, op: Op) {
    let Some(gpu) = gpu_or_skip(test) else { return };
    for seed in [1, 2] {
        let reports = check_op(&gpu, op, seed).expect("the op runs");
        assert!(!reports.is_empty());
        for r in &reports {
            assert!(r.passed, "{test} seed {seed}: {r:?}");
        }
    }
}

#[test]
fn gemm_matches_f64_reference_in_f32_bf16_f16() {
    run("gemm", Op::Gemm);
}

#[test]
fn rms_norm_matches_cpu() {
    run("rms_norm", Op::RmsNorm);
}

#[test]
fn add_rms_norm_matches_cpu() {
    run("add_rms_norm", Op::AddRmsNorm);
}

#[test]
fn rope_with_llama3_scaling_matches_cpu() {
    run("rope", Op::Rope);
}

#[test]
fn silu_mul_matches_cpu() {
    run("silu_mul", Op::SiluMul);
}

#[test]
fn embedding_gathers_only_the_ranks_vocab_span() {
    run("embedding", Op::Embedding);
}

#[test]
fn paged_attention_decode_matches_cpu() {
    run("paged_attention_decode", Op::AttentionDecode);
}

#[test]
fn paged_attention_prefill_matches_cpu() {
    run("paged_attention_prefill", Op::AttentionPrefill);
}

#[test]
fn argmax_matches_cpu() {
    run("argmax", Op::Argmax);
}

#[test]
fn sampling_matches_cpu_rule() {
    run("sample", Op::Sample);
}

#[test]
fn no_driver_is_a_typed_error_not_a_panic() {
    if tessera_cuda::driver_present() {
        eprintln!("SKIPPED no_driver_is_a_typed_error_not_a_panic: a driver is present");
        return;
    }
    let err = Gpu::new(0, &GpuOptions::default())
        .err()
        .expect("no driver, no GPU");
    assert!(
        err.to_string()
            .contains("built with CUDA but no CUDA driver found"),
        "{err}"
    );
}
