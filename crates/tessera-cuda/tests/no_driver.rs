//! A CUDA build on a machine without a driver answers with a typed error, not a panic.

use tessera_cuda::{CudaError, Gpu, GpuOptions};

#[test]
fn no_driver_is_a_typed_error_not_a_panic() {
    let got = Gpu::new(0, &GpuOptions::default());
    if tessera_cuda::driver_present() {
        // With a driver, device 0 opens or fails with a typed error other than NoDriver.
        if let Err(e) = got {
            assert!(
                !matches!(e, CudaError::NoDriver),
                "a driver is present: {e}"
            );
        }
        return;
    }
    let err = got.err().expect("no driver, no GPU");
    assert!(
        err.to_string()
            .contains("built with CUDA but no CUDA driver found"),
        "{err}"
    );
}
