//! Seeded random inputs shared by the integration tests.

#![allow(dead_code)]

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_kernels::{CpuPool, Isa};

/// A deterministic generator for test `seed`.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `len` values uniform in [-1, 1).
pub fn uniform(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `len` bf16 values uniform in [-1, 1).
pub fn uniform_bf16(rng: &mut ChaCha8Rng, len: usize) -> Vec<bf16> {
    uniform(rng, len).into_iter().map(bf16::from_f32).collect()
}

/// One pool per (available ISA, thread count in `threads`).
pub fn pools(threads: &[usize]) -> Vec<CpuPool> {
    let mut pools = Vec::new();
    for isa in Isa::available() {
        for &t in threads {
            pools.push(CpuPool::with_isa(t, isa).expect("available ISA"));
        }
    }
    pools
}

/// Bit patterns, so that comparisons are exact (and -0.0 differs from 0.0).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
