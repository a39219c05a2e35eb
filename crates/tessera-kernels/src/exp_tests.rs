use super::*;

/// Distance in units in the last place between two finite non-negative floats.
fn ulps(a: f32, b: f32) -> u32 {
    a.to_bits().abs_diff(b.to_bits())
}

/// Inputs that reach every branch: the range ends, zeros, infinities, NaN, and a sweep.
fn probe_inputs() -> Vec<f32> {
    let mut xs = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        MIN_X,
        MAX_X,
        MIN_X - 0.01,
        MAX_X + 0.01,
        -87.33,
        -100.0,
        100.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
    ];
    let mut state = 0x2545_f491_u32;
    for _ in 0..4000 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        xs.push((state as f32 / u32::MAX as f32) * 200.0 - 100.0);
    }
    xs
}

#[test]
fn exp_lane_is_within_two_ulp_of_the_true_value_over_its_range() {
    let (lo, hi) = (-87.0f32, MAX_X);
    let steps = 1_000_000;
    let mut worst = (0u32, 0.0f32);
    for i in 0..=steps {
        let x = lo + (hi - lo) * (i as f32 / steps as f32);
        let want = f64::from(x).exp() as f32;
        let d = ulps(exp_lane(x), want);
        if d > worst.0 {
            worst = (d, x);
        }
    }
    assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
}

#[test]
fn exp_lane_edges() {
    assert_eq!(exp_lane(0.0).to_bits(), 1.0f32.to_bits());
    assert_eq!(exp_lane(-0.0).to_bits(), 1.0f32.to_bits());
    assert_eq!(exp_lane(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp_lane(-100.0), 0.0);
    assert_eq!(exp_lane(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp_lane(100.0), f32::INFINITY);
    assert!(exp_lane(f32::NAN).is_nan());
    // Just above the flush point the result is tiny but not zero, and still increasing.
    assert!(exp_lane(MIN_X) > 0.0 && exp_lane(MIN_X) < exp_lane(MIN_X + 0.5));
    assert!(exp_lane(MAX_X).is_finite());
}

#[test]
fn softmax_numerators_are_the_same_bits_on_every_isa_for_every_length() {
    let xs = probe_inputs();
    let finite: Vec<f32> = xs.iter().copied().filter(|v| v.is_finite()).collect();
    for len in (1..=70).chain([127, 128, 129, 511, 512, 1000]) {
        let row: Vec<f32> = (0..len)
            .map(|i| finite[(i * 7 + len) % finite.len()])
            .collect();
        let mut want = row.clone();
        let want_z = softmax_scalar(&mut want, 0.125);
        for isa in Isa::available() {
            let mut got = row.clone();
            let z = softmax_numerators(isa, &mut got, 0.125);
            assert_eq!(z.to_bits(), want_z.to_bits(), "{isa:?} len {len}: sum");
            let (g, w): (Vec<u32>, Vec<u32>) = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a.to_bits(), b.to_bits()))
                .unzip();
            assert_eq!(g, w, "{isa:?} len {len}: numerators");
        }
    }
}

#[test]
fn softmax_numerators_match_f64_softmax() {
    let row: Vec<f32> = probe_inputs()
        .into_iter()
        .filter(|v| v.is_finite())
        .take(300)
        .map(|v| v / 4.0)
        .collect();
    let scale = 0.125f32;
    let scaled: Vec<f64> = row.iter().map(|&v| f64::from(v * scale)).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let want_z: f64 = scaled.iter().map(|s| (s - max).exp()).sum();
    for isa in Isa::available() {
        let mut got = row.clone();
        let z = softmax_numerators(isa, &mut got, scale);
        assert!(
            (f64::from(z) - want_z).abs() <= 1e-6 * want_z,
            "{isa:?}: {z} vs {want_z}"
        );
        for (g, s) in got.iter().zip(&scaled) {
            let w = (s - max).exp();
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * w + 1e-30,
                "{isa:?}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn vector_exp_lanes_equal_the_scalar_lane_bitwise() {
    let xs = probe_inputs();
    let up = vec![1.0f32; xs.len()];
    let mut want: Vec<f32> = xs.clone();
    silu_mul_rows(Isa::Scalar, &mut want, &up);
    for isa in Isa::available() {
        let mut got = xs.clone();
        silu_mul_rows(isa, &mut got, &up);
        for ((g, w), x) in got.iter().zip(&want).zip(&xs) {
            let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
            assert!(same, "{isa:?}: silu({x}) = {g}, scalar {w}");
        }
    }
}
