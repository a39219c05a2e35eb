use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Values spread over many binades (both signs), so that sums cancel and round.
fn spread(r: &mut ChaCha8Rng, len: usize, binades: i32) -> Vec<f32> {
    (0..len)
        .map(|_| r.random_range(-1.0f32..1.0) * 2f32.powi(r.random_range(-binades..=binades)))
        .collect()
}

#[test]
fn rounding_is_nearest_even_flushes_subnormals_and_matches_the_instruction() {
    let mut r = ChaCha8Rng::seed_from_u64(1);
    for x in spread(&mut r, 20_000, 60) {
        assert_eq!(round_bf16(x), half::bf16::from_f32(x).to_bits(), "{x:e}");
    }
    // Ties go to even, the largest finite rounds to infinity, NaN stays NaN.
    assert_eq!(round_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(round_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(round_bf16(f32::MAX), 0x7f80);
    assert!(widen(round_bf16(f32::NAN)).is_nan());
    assert_eq!(round_bf16(1e-39), 0);
    assert_eq!(round_bf16(-1e-39), 0x8000);
    assert_eq!(round_bf16(f32::MIN_POSITIVE), 0x0080);
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512bf16") {
        rounding_matches_the_instruction();
    }
}

/// On a CPU with AVX-512 BF16: `round_bf16` gives `vcvtneps2bf16`'s bits, subnormals,
/// infinities and ties included.
#[cfg(target_arch = "x86_64")]
fn rounding_matches_the_instruction() {
    use std::arch::x86_64::*;
    /// Rounds 16 floats with `vcvtneps2bf16`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn hw(x: &[f32; 16]) -> [u16; 16] {
        // SAFETY: 16 floats readable, 16 u16 writable.
        unsafe {
            let v: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr())));
            let mut out = [0u16; 16];
            _mm256_storeu_si256(out.as_mut_ptr().cast(), v);
            out
        }
    }
    let mut r = ChaCha8Rng::seed_from_u64(2);
    let mut xs = spread(&mut r, 16 * 2000, 140);
    xs.extend([
        0.0,
        -0.0,
        1e-39,
        -1e-39,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    xs.extend([
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        3.0e38,
        f32::from_bits(0x3f80_8000),
    ]);
    xs.resize(xs.len().div_ceil(16) * 16, 1.0);
    for block in xs.chunks_exact(16) {
        let block: &[f32; 16] = block.try_into().unwrap();
        // SAFETY: the CPU has AVX-512 BF16 (checked above).
        let want = unsafe { hw(block) };
        for (x, w) in block.iter().zip(want) {
            assert_eq!(round_bf16(*x), w, "{x:e}");
        }
    }
}

/// Runs `kernel` on one `mr x np` tile over k in `k0..k1` and returns its sums.
#[allow(clippy::too_many_arguments)]
fn run_tile(
    kernel: unsafe fn(*const u16, &TileArgs),
    x: &[f32],
    xb: &[u16],
    kp: usize,
    w: &[u16],
    (mr, np): (usize, usize),
    (k0, k1): (usize, usize),
    bits: bool,
) -> Vec<u32> {
    let mut out = vec![f32::NAN; mr * np * PANEL];
    let args = TileArgs {
        x: x.as_ptr(),
        xb: if bits { xb.as_ptr() } else { std::ptr::null() },
        xq: std::ptr::null(),
        xd: std::ptr::null(),
        xs: std::ptr::null(),
        ldx: kp,
        mr,
        pstride: PANEL * kp,
        np,
        k0,
        k1,
        out: out.as_mut_ptr(),
    };
    // SAFETY: x/xb hold mr rows of kp, w holds np panels of kp pairs, out mr*np*16 floats.
    unsafe { kernel(w.as_ptr(), &args) };
    out.iter().map(|v| v.to_bits()).collect()
}

#[cfg(target_arch = "x86_64")]
#[test]
fn every_x86_pair_kernel_and_the_instruction_give_the_portable_bits() {
    use super::super::{x86_avx2, x86_avx512};
    type Kernel = unsafe fn(*const u16, &TileArgs);
    let mut kernels: Vec<(&str, Kernel, bool)> = Vec::new();
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        kernels.push(("avx2", x86_avx2::tile_pairs, false));
    }
    if crate::Isa::Avx512.is_available() {
        kernels.push(("avx512 fma", x86_avx512::tile_pairs, false));
        if is_x86_feature_detected!("avx512bf16") {
            kernels.push(("avx512 vdpbf16ps", x86_avx512::tile_pairs_dot, true));
        }
    }
    let mut r = ChaCha8Rng::seed_from_u64(3);
    for (case, k) in [2usize, 7, 64, 131, 576].into_iter().enumerate() {
        let kp = pairs_len(k);
        let rows = 8;
        let x = spread(&mut r, rows * k, 12);
        let w: Vec<half::bf16> = spread(&mut r, 8 * PANEL * k, 12)
            .into_iter()
            .map(half::bf16::from_f32)
            .collect();
        let packed = pack_pairs(&w, 8 * PANEL, k).unwrap();
        let xf = with_rounded(&x, rows, k, false, |r| match r {
            Rounded::F32(v) => v.to_vec(),
            Rounded::Bf16(_) => unreachable!(),
        });
        let xb = with_rounded(&x, rows, k, true, |r| match r {
            Rounded::Bf16(v) => v.to_vec(),
            Rounded::F32(_) => unreachable!(),
        });
        for (k0, k1) in [(0, k), (0, k.min(2)), (k / 2 / 2 * 2, k)] {
            for shape in [(1, 1), (1, 8), (8, 2), (3, 1), (6, 1), (5, 2)] {
                let want = run_tile(tile_scalar, &xf, &xb, kp, &packed, shape, (k0, k1), false);
                for &(name, kernel, bits) in &kernels {
                    let fits = match name {
                        "avx2" => (shape.0 <= 6 && shape.1 == 1) || (shape.0 == 1 && shape.1 <= 4),
                        _ => shape.0 <= 8 && (shape.1 <= 2 || shape.0 == 1),
                    };
                    if !fits {
                        continue;
                    }
                    let got = run_tile(kernel, &xf, &xb, kp, &packed, shape, (k0, k1), bits);
                    assert_eq!(got, want, "{name} case {case} k={k} {k0}..{k1} {shape:?}");
                }
            }
        }
    }
}

#[test]
fn odd_chunks_below_k_are_refused_and_odd_k_is_padded() {
    assert!(check_pair_chunk(10, 3).is_err());
    assert!(check_pair_chunk(10, 4).is_ok());
    assert!(check_pair_chunk(3, 7).is_ok());
    // k = 3: the pad pair is (x 0, w 0), the order (k1 first, then k0; pad, then k2).
    let x = [1.0f32, 2.0, 3.0];
    let w: Vec<half::bf16> = [0.5f32, 0.25, 4.0].map(half::bf16::from_f32).to_vec();
    let mut y = [0.0f32];
    matmul_bf16_reference(&x, 1, 3, &w, 1, None, usize::MAX, ChunkOutput::Fold, &mut y).unwrap();
    assert_eq!(y[0], 13.0);
    let packed = pack_pairs(&w, 1, 3).unwrap();
    assert_eq!(packed.len(), PANEL * 4);
    assert_eq!(&packed[pair_index(0, 2)..][..2], &[0x4080, 0]);
}
