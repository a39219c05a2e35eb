//! Shared by the emulation tests: inputs, guarded buffers and the error measure of
//! `tessera-cuda`'s GPU op checks (‖out − ref‖ / ‖ref‖ in f64, NaN never passes).
#![allow(dead_code)]

pub mod paged;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_cuda_emu::{DevBuf, Placement};

/// Both placements: data flush against the trailing guard page, then the leading one.
pub const PLACES: [Placement; 2] = [Placement::End, Placement::Start];

/// A seeded generator per test case.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// `n` uniform values in `-scale..scale`.
pub fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A guarded copy of `v`.
pub fn dev<T: Copy>(v: &[T], place: Placement) -> DevBuf<T> {
    DevBuf::from_slice(v, place).expect("guarded memory")
}

/// A guarded output of `n` NaNs (an element a kernel fails to write fails the check).
pub fn poisoned(n: usize, place: Placement) -> DevBuf<f32> {
    DevBuf::filled(n, f32::NAN, place).expect("guarded memory")
}

/// Relative error of `out` against `reference`; infinite when `out` has a non-finite value.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    if out.len() != reference.len() || out.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&o, &r) in out.iter().zip(reference) {
        num += (o as f64 - r as f64).powi(2);
        den += (r as f64).powi(2);
    }
    if den == 0.0 {
        return num.sqrt();
    }
    (num / den).sqrt()
}

/// Panics with `what` unless `out` is within `bound` of `reference`.
pub fn assert_close(what: &str, out: &[f32], reference: &[f32], bound: f64) {
    let e = rel_err(out, reference);
    assert!(e <= bound, "{what}: relative error {e:e} over {bound:e}");
}

/// Threads per block for a row of `dim` elements, as `tessera-cuda` launches row kernels.
pub fn row_threads(dim: usize) -> u32 {
    (dim.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Blocks of `per` threads covering `n` elements.
pub fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}
