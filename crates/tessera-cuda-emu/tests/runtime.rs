//! The emulation itself: barriers and shuffles synchronise, misuse is an error, and an
//! index past a buffer's end kills the process (so a broken kernel fails `cargo test`).

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use tessera_cuda_emu::{kernels as k, launch, DevBuf, Placement};

#[test]
fn syncthreads_makes_every_shared_write_visible() {
    let n = 1024;
    let data: Vec<i32> = (0..2 * n).collect();
    let mut d = dev(&data, Placement::End);
    let p = d.mut_ptr();
    launch([2, 1, 1], [n as u32, 1, 1], || unsafe {
        k::emu_selftest_reverse(p)
    })
    .expect("launch");
    let want: Vec<i32> = (0..2)
        .flat_map(|b| (0..n).rev().map(move |i| b * n + i))
        .collect();
    assert_eq!(d.to_vec(), want);
}

#[test]
fn warp_shuffles_exchange_between_lanes() {
    let input: Vec<i32> = (0..64).map(|i| i * i).collect();
    let d = dev(&input, Placement::End);
    let (mut sum, mut next) = (
        DevBuf::filled(64, 0, Placement::End).expect("memory"),
        DevBuf::filled(64, 0, Placement::End).expect("memory"),
    );
    let (s, nx) = (sum.mut_ptr(), next.mut_ptr());
    launch([1, 1, 1], [64, 1, 1], || unsafe {
        k::emu_selftest_shuffles(d.ptr(), s, nx)
    })
    .expect("launch");
    for (t, (&got_sum, &got_next)) in sum.to_vec().iter().zip(&next.to_vec()).enumerate() {
        let warp = &input[t / 32 * 32..][..32];
        assert_eq!(got_sum, warp.iter().sum::<i32>(), "lane {t}");
        let src = if t % 32 == 31 { t } else { t + 1 };
        assert_eq!(got_next, input[src], "lane {t}");
    }
}

#[test]
fn a_barrier_some_threads_never_reach_is_an_error() {
    let mut out = DevBuf::filled(64, 0i32, Placement::End).expect("memory");
    let o = out.mut_ptr();
    let err = launch([1, 1, 1], [64, 1, 1], || unsafe {
        k::emu_selftest_divergent_barrier(o)
    })
    .expect_err("must not pass");
    assert!(err.to_string().contains("__syncthreads"), "{err}");
}

/// In the child: RMSNorm told rows are 1025 wide over a buffer of 1024 values.
fn read_past_the_end() {
    let x = dev(&vec![1.0f32; 1024], Placement::End);
    let w = dev(&vec![1.0f32; 1025], Placement::End);
    let mut out = poisoned(1025, Placement::End);
    let o = out.mut_ptr();
    let _ = launch([1, 1, 1], [1024, 1, 1], || unsafe {
        k::rms_norm_f32(x.ptr(), w.ptr(), o, 1025, 1e-5)
    });
}

#[allow(
    clippy::disallowed_methods,
    reason = "the test re-runs itself as a child, marked in the environment"
)]
#[test]
fn an_index_past_the_end_faults() {
    if std::env::var_os("TESSERA_EMU_FAULT_CHILD").is_some() {
        read_past_the_end();
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let status = std::process::Command::new(exe)
        .args([
            "an_index_past_the_end_faults",
            "--exact",
            "--test-threads=1",
        ])
        .env("TESSERA_EMU_FAULT_CHILD", "1")
        .output()
        .expect("child runs")
        .status;
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "child ended with {status:?}"
    );
}
