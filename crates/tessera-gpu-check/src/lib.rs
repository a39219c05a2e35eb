//! Test harness for a GPU machine, kept out of the runtime's libraries: every op of
//! `tessera-cuda` against its CPU reference (`opcheck`), used by this crate's ignored GPU
//! tests and by `tessera gpu-check` (`tools/gpu/check.sh`). Without a GPU, the same
//! kernels run on the CPU in `tessera-cuda-emu`.

pub mod opcheck;
