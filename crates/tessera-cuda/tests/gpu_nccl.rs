//! NCCL with one rank on GPU 0: the collectives leave the data as it was. Ignored by
//! default (`cargo test -- --ignored` on a GPU machine with libnccl runs it).

use tessera_comm::Communicator;
use tessera_cuda::collective::DeviceComm;
use tessera_cuda::nccl::NcclCommunicator;
use tessera_cuda::{nvrtc::python_cuda_lib_dirs, Gpu, GpuOptions};

#[test]
#[ignore = "needs an NVIDIA GPU and libnccl"]
fn one_rank_nccl_collectives_are_identities() {
    let dirs = python_cuda_lib_dirs();
    let gpu = Gpu::new(
        0,
        &GpuOptions {
            lib_dirs: dirs.clone(),
            ptx_cache: None,
        },
    )
    .unwrap_or_else(|e| panic!("needs a usable NVIDIA GPU: {e}"));
    let mut comm = NcclCommunicator::init_all(&[&gpu], &dirs)
        .unwrap_or_else(|e| panic!("needs libnccl: {e}"))
        .pop()
        .expect("one communicator");
    let data: Vec<f32> = (0..777).map(|i| (i as f32).sin()).collect();
    let mut buf = data.clone();
    Communicator::all_reduce_sum(&mut comm, &mut buf).expect("all_reduce");
    assert_eq!(buf, data);
    let mut out = vec![f32::NAN; data.len()];
    Communicator::all_gather(&mut comm, &data, &mut out).expect("all_gather");
    assert_eq!(out, data);
    let mut dev = gpu.upload(&data).expect("upload");
    DeviceComm::all_reduce_sum(&mut comm, &gpu, &mut dev, data.len()).expect("device all_reduce");
    assert_eq!(gpu.download(&dev).expect("download"), data);
    // Ordered reduction of two partial vectors on the one rank: their sum, in order.
    let partials: Vec<f32> = data.iter().chain(&data).copied().collect();
    let mut sum = vec![f32::NAN; data.len()];
    comm.all_reduce_ordered(&partials, &mut sum)
        .expect("all_reduce_ordered");
    let want: Vec<f32> = data.iter().map(|v| v + v).collect();
    assert_eq!(sum, want);
    let mut kept = vec![f32::NAN; 10];
    comm.reduce_scatter_ordered(&partials, data.len(), 5..15, &mut kept)
        .expect("reduce_scatter_ordered");
    assert_eq!(kept, want[5..15]);
    assert!(Communicator::stats(&comm).calls >= 5);
}
