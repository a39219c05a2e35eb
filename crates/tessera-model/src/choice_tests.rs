//! Tests of the shared row choice: its filters, its draw, its tolerance check, and the
//! frequencies it gives over evenly spread uniforms against the renormalized softmax.

use super::*;

fn sampled(temperature: f32, top_k: usize, top_p: f32, uniform: f32) -> RowChoice {
    RowChoice {
        temperature,
        top_k,
        top_p,
        uniform,
    }
}

/// Logits whose softmax at temperature 1 is `probs`.
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

/// softmax(`logits` / `temperature`) restricted to `kept` and renormalized, in f64.
fn renormalized(logits: &[f32], temperature: f64, kept: &[usize]) -> Vec<f64> {
    let w: Vec<f64> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            if kept.contains(&i) {
                (f64::from(l) / temperature).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// How often each token is chosen over `n` uniforms spread evenly over [0, 1).
fn frequencies(logits: &[f32], choice: RowChoice, n: usize) -> Vec<f64> {
    let mut chooser = RowChooser::default();
    let mut counts = vec![0usize; logits.len()];
    for j in 0..n {
        let uniform = ((j as f64 + 0.5) / n as f64) as f32;
        counts[chooser.choose(logits, &RowChoice { uniform, ..choice }) as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

#[test]
fn frequencies_over_spread_uniforms_match_the_renormalized_softmax() {
    let logits = logits_of(&[0.05, 0.3, 0.12, 0.25, 0.2, 0.08]);
    // (temperature, top_k, top_p, kept tokens)
    let cases: [(f32, usize, f32, &[usize]); 6] = [
        (1.0, 0, 1.0, &[0, 1, 2, 3, 4, 5]),
        (0.5, 0, 1.0, &[0, 1, 2, 3, 4, 5]),
        (1.0, 3, 1.0, &[1, 3, 4]),
        (1.0, 0, 0.5, &[1, 3]),
        // top_p is a share of what top_k kept: 0.7 of 0.75 is reached by 0.3 + 0.25.
        (1.0, 3, 0.7, &[1, 3]),
        (2.0, 5, 0.85, &[1, 2, 3, 4]),
    ];
    for (temperature, top_k, top_p, kept) in cases {
        let choice = sampled(temperature, top_k, top_p, 0.0);
        let got = frequencies(&logits, choice, 20_000);
        let want = renormalized(&logits, f64::from(temperature), kept);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            // Each token's share of the spread uniforms is exact to one step of 1/n.
            assert!(
                (g - w).abs() <= 1e-4,
                "{choice:?} token {i}: {g} vs {w}\n{got:?}\n{want:?}"
            );
        }
    }
}

#[test]
fn filters_keep_top_k_and_top_p_and_skip_nan() {
    let logits = [0.0, 5.0, 1.0, 4.0, f32::NAN, 3.0];
    let mut c = RowChooser::default();
    for u in [0.0, 0.5, 0.99] {
        assert_eq!(c.sample(&logits, &sampled(1.0, 1, 1.0, u)), Some(1));
    }
    assert_eq!(c.sample(&logits, &sampled(1.0, 2, 1.0, 0.99)), Some(3));
    // Token 1 holds ~66% of the mass: top_p 0.5 keeps it alone.
    assert_eq!(c.sample(&logits, &sampled(1.0, 0, 0.5, 0.99)), Some(1));
    assert_eq!(c.sample(&logits, &sampled(1.0, 0, 1.0, 0.0)), Some(0));
    assert_eq!(c.sample(&[f32::NAN], &sampled(1.0, 0, 1.0, 0.5)), None);
}

#[test]
fn ties_at_the_top_k_floor_are_kept_together() {
    let logits = [1.0, 3.0, 2.0, 2.0, 0.0];
    let mut c = RowChooser::default();
    let kept: Vec<usize> = (0..100)
        .filter_map(|j| c.sample(&logits, &sampled(1.0, 2, 1.0, j as f32 / 100.0)))
        .collect();
    for token in [1, 2, 3] {
        assert!(kept.contains(&token), "token {token} never drawn: {kept:?}");
    }
    assert!(kept.iter().all(|t| [1, 2, 3].contains(t)), "{kept:?}");
}

#[test]
fn greedy_choices_and_degenerate_rows_give_the_greedy_token() {
    let rows: [&[f32]; 5] = [
        &[0.0, 2.0, 2.0, 1.0],
        &[f32::NAN, -0.0, 0.0, f32::NAN],
        &[f32::NAN, f32::NAN],
        &[1.0, f32::INFINITY, f32::MAX, f32::INFINITY],
        &[],
    ];
    for row in rows {
        assert_eq!(
            choose(row, &RowChoice::GREEDY),
            greedy_token(row),
            "{row:?}"
        );
    }
    assert_eq!(choose(&[], &sampled(1.0, 0, 1.0, 0.5)), 0);
    assert_eq!(choose(&[f32::NAN, f32::NAN], &sampled(1.0, 0, 1.0, 0.5)), 0);
    let inf = [f32::NEG_INFINITY, f32::INFINITY, 0.0];
    assert_eq!(choose(&inf, &sampled(1.0, 0, 1.0, 0.99)), 1);
    // A NaN temperature is greedy, not a poisoned draw.
    assert!(sampled(f32::NAN, 0, 1.0, 0.5).is_greedy());
    // A uniform of 1 or more (not a valid draw) still gives a kept token.
    assert_eq!(choose(&[0.0, 1.0, -9.0], &sampled(1.0, 2, 1.0, 1.0)), 1);
}

#[test]
fn accepts_the_exact_draw_and_rejects_others() {
    let logits: Vec<f32> = (0..200)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
        .collect();
    let mut c = RowChooser::default();
    for (t, k, p) in [(1.0, 0, 1.0), (0.7, 20, 1.0), (1.0, 0, 0.8), (1.3, 30, 0.8)] {
        for u in [0.05f32, 0.3, 0.77, 0.999] {
            let choice = sampled(t, k, p, u);
            let exact = c.sample(&logits, &choice).expect("a token");
            assert!(c.accepts(&logits, &choice, exact, 1e-6), "{choice:?}");
            // Every other token is rejected unless it is the same logit's twin.
            for other in 0..logits.len() {
                if other != exact && logits[other] != logits[exact] {
                    assert!(
                        !c.accepts(&logits, &choice, other, 1e-6),
                        "{choice:?} token {other}"
                    );
                }
            }
        }
    }
    assert!(c.accepts(
        &logits,
        &RowChoice::GREEDY,
        greedy_token(&logits) as usize,
        0.0
    ));
}

#[test]
fn a_large_nucleus_is_found_past_the_first_chunk() {
    // 1000 nearly equal tokens in 7 groups of equal logits: top_p 0.8 needs a head of
    // about 800, past several chunks, and keeps whole groups (ties go together): the
    // six largest (857 tokens), not the smallest (143).
    let logits: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 * 1e-3).collect();
    let got = frequencies(&logits, sampled(1.0, 0, 0.8, 0.0), 10_000);
    let kept = got.iter().filter(|&&f| f > 0.0).count();
    assert_eq!(kept, 857);
    let mut c = RowChooser::default();
    let floor = c
        .prepare(&logits, &sampled(1.0, 0, 0.8, 0.0), 0.8)
        .expect("kept")
        .floor;
    assert_eq!(floor, 1e-3);
    for (i, &l) in logits.iter().enumerate() {
        assert_eq!(got[i] > 0.0, l >= floor, "token {i}");
    }
}
