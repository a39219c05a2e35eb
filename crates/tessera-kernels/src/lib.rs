//! tessera-kernels (work in progress).
