//! Tests of the sampler: distributions, filters, penalties, seeds and parameter validation.

use super::*;
use proptest::prelude::*;
use rand::Rng;

/// Reference ranking, independent of [`rank_key`]: `Less` when `a` comes first.
fn by_rank(a: (f64, u32), b: (f64, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

pub(super) fn seeded(seed: u64) -> SamplingParams {
    SamplingParams {
        seed: Some(seed),
        ..SamplingParams::default()
    }
}

pub(super) fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..seeded(0)
    }
}

/// Reference softmax in f64.
fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// `probs` restricted to `kept` and renormalized.
fn renormalized(probs: &[f64], kept: &[usize]) -> Vec<f64> {
    let total: f64 = kept.iter().map(|&i| probs[i]).sum();
    (0..probs.len())
        .map(|i| {
            if kept.contains(&i) {
                probs[i] / total
            } else {
                0.0
            }
        })
        .collect()
}

/// Logits whose softmax at temperature 1 is exactly `probs`.
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

fn frequencies(params: &SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
    let mut sampler = Sampler::new(params, &[]);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..draws {
        counts[sampler.sample(logits).token as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / draws as f64).collect()
}

fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tolerance,
            "token {i}: frequency {a:.4} vs expected {e:.4}\nall: {actual:?}\nexpected: {expected:?}"
        );
    }
}

pub(super) fn random_logits(rng: &mut ChaCha8Rng, vocab: usize, scale: f32) -> Vec<f32> {
    (0..vocab)
        .map(|_| (rng.random::<f32>() - 0.5) * scale)
        .collect()
}

fn sample_tokens(params: &SamplingParams, steps: usize) -> Vec<u32> {
    let mut sampler = Sampler::new(params, &[1, 2, 3]);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    (0..steps)
        .map(|_| sampler.sample(&random_logits(&mut rng, 50, 4.0)).token)
        .collect()
}

// ---------------------------------------------------------------- greedy

#[test]
fn greedy_picks_argmax_of_biased_logits() {
    let logits = [1.0, 3.0, 2.0, 0.5];
    assert_eq!(Sampler::new(&greedy(), &[]).sample(&logits).token, 1);
    let biased = SamplingParams {
        logit_bias: vec![(2, 1.5)],
        ..greedy()
    };
    assert_eq!(Sampler::new(&biased, &[]).sample(&logits).token, 2);
}

#[test]
fn greedy_breaks_ties_by_lowest_id_and_never_picks_nan() {
    let mut sampler = Sampler::new(&greedy(), &[]);
    assert_eq!(sampler.sample(&[0.0, 2.0, 2.0, 1.0]).token, 1);
    assert_eq!(sampler.sample(&[f32::NAN, -0.0, 0.0, f32::NAN]).token, 1);
    assert_eq!(sampler.sample(&[f32::NAN, -5.0]).token, 1);
}

#[test]
fn greedy_token_agrees_with_a_plain_greedy_sampler() {
    let rows: [&[f32]; 6] = [
        &[0.0, 2.0, 2.0, 1.0],
        &[f32::NAN, -0.0, 0.0, f32::NAN],
        &[f32::NAN, -5.0],
        &[f32::NAN, f32::NAN],
        &[1.0, f32::INFINITY, f32::MAX, f32::INFINITY],
        &[-3.0, -1.0, -1.0 - f32::EPSILON],
    ];
    let mut sampler = Sampler::new(&greedy(), &[]);
    assert!(sampler.is_plain());
    assert_eq!(sampler.clone().plain_choice(), Some(RowChoice::GREEDY));
    for row in rows {
        assert_eq!(greedy_token(row), sampler.sample(row).token, "{row:?}");
    }
    let biased = SamplingParams {
        logit_bias: vec![(1, 2.0)],
        ..greedy()
    };
    assert!(!Sampler::new(&biased, &[]).is_plain());
}

#[test]
fn tiny_temperature_is_greedy() {
    let params = SamplingParams {
        temperature: 1e-7,
        ..seeded(3)
    };
    let logits = [1.0, 1.0 + 1e-6, 0.0];
    let tokens: Vec<u32> = {
        let mut s = Sampler::new(&params, &[]);
        (0..50).map(|_| s.sample(&logits).token).collect()
    };
    assert!(tokens.iter().all(|&t| t == 1), "{tokens:?}");
}

// ---------------------------------------------------------- temperature

#[test]
fn frequencies_match_softmax_at_temperature_1() {
    let logits = [0.0, 1.0, 2.0, 0.5];
    let actual = frequencies(&seeded(11), &logits, 5000);
    assert_close(&actual, &softmax(&logits, 1.0), 0.02);
}

#[test]
fn frequencies_match_sharpened_softmax_at_temperature_half() {
    let logits = [0.0, 1.0, 2.0, 0.5];
    let params = SamplingParams {
        temperature: 0.5,
        ..seeded(12)
    };
    let actual = frequencies(&params, &logits, 5000);
    assert_close(&actual, &softmax(&logits, 0.5), 0.02);
}

// -------------------------------------------------------------- filters

#[test]
fn top_k_1_equals_greedy_including_ties() {
    let top1 = SamplingParams {
        top_k: Some(1),
        ..seeded(5)
    };
    let mut sampled = Sampler::new(&top1, &[]);
    let mut argmax = Sampler::new(&greedy(), &[]);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..300 {
        // Coarse values make ties between the best tokens common.
        let logits: Vec<f32> = (0..20)
            .map(|_| rng.random_range(0..6) as f32 * 0.5)
            .collect();
        assert_eq!(sampled.sample(&logits).token, argmax.sample(&logits).token);
    }
}

#[test]
fn top_k_2_keeps_the_two_most_likely_tokens() {
    let probs = [0.1, 0.4, 0.15, 0.35];
    let params = SamplingParams {
        top_k: Some(2),
        ..seeded(21)
    };
    let actual = frequencies(&params, &logits_of(&probs), 5000);
    assert_close(&actual, &renormalized(&probs, &[1, 3]), 0.02);
    assert_eq!(actual[0] + actual[2], 0.0);
}

#[test]
fn top_p_half_keeps_only_the_head() {
    let params = SamplingParams {
        top_p: 0.5,
        ..seeded(31)
    };
    let one_head = [0.2, 0.6, 0.1, 0.1];
    let actual = frequencies(&params, &logits_of(&one_head), 2000);
    assert_eq!(actual, vec![0.0, 1.0, 0.0, 0.0]);
    let two_head = [0.1, 0.3, 0.2, 0.4];
    let actual = frequencies(&params, &logits_of(&two_head), 5000);
    assert_close(&actual, &renormalized(&two_head, &[1, 3]), 0.02);
    assert_eq!(actual[0] + actual[2], 0.0);
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_best() {
    let probs = [0.5, 0.3, 0.15, 0.05];
    let params = SamplingParams {
        min_p: 0.2,
        ..seeded(41)
    };
    let actual = frequencies(&params, &logits_of(&probs), 5000);
    assert_close(&actual, &renormalized(&probs, &[0, 1, 2]), 0.02);
    assert_eq!(actual[3], 0.0);
}

#[test]
fn min_p_uses_probabilities_after_temperature() {
    // At temperature 1 token 1 has 0.3 / 0.5 = 0.6 of the best; at 0.25 it has 0.13.
    let probs = [0.5, 0.3, 0.2];
    let params = SamplingParams {
        min_p: 0.5,
        temperature: 0.25,
        ..seeded(42)
    };
    let actual = frequencies(&params, &logits_of(&probs), 500);
    assert_eq!(actual, vec![1.0, 0.0, 0.0]);
}

// ------------------------------------------------------ bias, penalties

#[test]
fn logit_bias_of_minus_100_bans_a_token() {
    let logits = [5.0, 0.0, 0.0];
    let params = SamplingParams {
        logit_bias: vec![(0, -100.0)],
        ..seeded(51)
    };
    let actual = frequencies(&params, &logits, 2000);
    assert_eq!(actual[0], 0.0);
    assert_close(&actual, &[0.0, 0.5, 0.5], 0.04);
}

#[test]
fn logit_bias_is_clamped_to_100() {
    let params = SamplingParams {
        logit_bias: vec![(0, 1e6), (1, -1e6)],
        ..greedy()
    };
    let mut sampler = Sampler::new(&params, &[]);
    sampler.prepare_logits(&[1.0, 1.0, 1.0]);
    assert_eq!(sampler.logits, vec![101.0, -99.0, 1.0]);
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        ..greedy()
    };
    let mut sampler = Sampler::new(&params, &[0, 1, 1]);
    sampler.prepare_logits(&[2.0, -2.0, 2.0, -2.0]);
    assert_eq!(sampler.logits, vec![1.0, -4.0, 2.0, -2.0]);
    // An output token is penalized too, once however often it occurs.
    let token = sampler.sample(&[0.0, 0.0, 0.0, 9.0]).token;
    assert_eq!(token, 3);
    sampler.sample(&[0.0, 0.0, 0.0, 9.0]);
    sampler.prepare_logits(&[2.0, -2.0, 2.0, -2.0]);
    assert_eq!(sampler.logits, vec![1.0, -4.0, 2.0, -4.0]);
}

#[test]
fn presence_and_frequency_penalties_count_output_tokens_only() {
    let params = SamplingParams {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        ..greedy()
    };
    let mut sampler = Sampler::new(&params, &[0, 0, 0]);
    for _ in 0..3 {
        sampler.sample(&[0.0, 0.0, 50.0, 0.0]);
    }
    sampler.sample(&[0.0, 50.0, 0.0, 0.0]);
    sampler.prepare_logits(&[0.0; 4]);
    // token 2: 0.5 + 3 * 0.25; token 1: 0.5 + 0.25; prompt token 0 untouched.
    assert_eq!(sampler.logits, vec![0.0, -0.75, -1.25, 0.0]);
}

#[test]
fn frequency_penalty_steers_greedy_away_from_repeats() {
    let params = SamplingParams {
        frequency_penalty: 0.3,
        ..greedy()
    };
    let mut sampler = Sampler::new(&params, &[]);
    let tokens: Vec<u32> = (0..4).map(|_| sampler.sample(&[1.0, 0.5]).token).collect();
    // 1.0 > 0.5; 0.7 > 0.5; 0.4 < 0.5; 0.4 > 0.2.
    assert_eq!(tokens, vec![0, 0, 1, 0]);
}

#[test]
fn presence_penalty_steers_greedy_away_from_repeats() {
    let params = SamplingParams {
        presence_penalty: 0.5,
        ..greedy()
    };
    let mut sampler = Sampler::new(&params, &[]);
    let tokens: Vec<u32> = (0..4).map(|_| sampler.sample(&[1.0, 0.6]).token).collect();
    // 1.0 > 0.6; 0.5 < 0.6; then 0.5 > 0.1 for good.
    assert_eq!(tokens, vec![0, 1, 0, 0]);
}

#[test]
fn presence_penalty_lowers_a_repeated_tokens_frequency() {
    let logits = [0.0, 0.0];
    let params = SamplingParams {
        presence_penalty: 1.0,
        ..seeded(61)
    };
    let mut sampler = Sampler::new(&params, &[]);
    let mut zeros = 0;
    for _ in 0..2000 {
        // Token 0 has occurred once, token 1 never: only token 0 pays the penalty.
        sampler.output_counts.clear();
        sampler.output_counts.insert(0, 1);
        zeros += usize::from(sampler.sample(&logits).token == 0);
    }
    let expected = softmax(&[-1.0, 0.0], 1.0)[0];
    assert!((zeros as f64 / 2000.0 - expected).abs() < 0.03, "{zeros}");
}

// ----------------------------------------------------------- determinism

#[test]
fn seeded_samplers_repeat() {
    let params = SamplingParams {
        top_p: 0.9,
        top_k: Some(30),
        repetition_penalty: 1.2,
        ..seeded(77)
    };
    assert_eq!(sample_tokens(&params, 200), sample_tokens(&params, 200));
}

#[test]
fn different_seeds_give_different_tokens() {
    assert_ne!(
        sample_tokens(&seeded(1), 200),
        sample_tokens(&seeded(2), 200)
    );
    let unseeded = SamplingParams::default();
    assert_ne!(sample_tokens(&unseeded, 200), sample_tokens(&unseeded, 200));
}

#[test]
fn seeded_sampler_ignores_other_samplers() {
    let params = seeded(8);
    let alone = sample_tokens(&params, 100);
    let mut a = Sampler::new(&params, &[1, 2, 3]);
    let mut b = Sampler::new(&seeded(9), &[]);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let interleaved: Vec<u32> = (0..100)
        .map(|_| {
            let logits = random_logits(&mut rng, 50, 4.0);
            b.sample(&logits);
            a.sample(&logits).token
        })
        .collect();
    assert_eq!(alone, interleaved);
}

#[test]
fn plain_choice_draws_what_sample_picks_from_the_same_row() {
    let params = SamplingParams {
        temperature: 0.8,
        top_k: Some(20),
        top_p: 0.9,
        ..seeded(13)
    };
    let (mut host, mut rank) = (Sampler::new(&params, &[]), Sampler::new(&params, &[]));
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut tokens = BTreeSet::new();
    for _ in 0..200 {
        let logits = random_logits(&mut rng, 50, 4.0);
        let choice = rank.plain_choice().expect("a plain sampler");
        let token = tessera_model::choose(&logits, &choice);
        assert_eq!(host.sample(&logits).token, rank.accept(token).token);
        tokens.insert(token);
    }
    assert!(tokens.len() > 10, "the draws vary: {tokens:?}");
    // Logprobs, bias, penalties or min_p need the row on the host: no choice, no draw.
    let needs_row = [
        SamplingParams {
            logprobs: Some(1),
            ..params.clone()
        },
        SamplingParams {
            min_p: 0.1,
            ..params.clone()
        },
        SamplingParams {
            frequency_penalty: 0.5,
            ..params.clone()
        },
    ];
    for p in needs_row {
        let mut s = Sampler::new(&p, &[]);
        assert_eq!(s.plain_choice(), None, "{p:?}");
        assert!(!s.is_plain());
    }
    // Greedy needs no draw.
    assert_eq!(
        Sampler::new(&greedy(), &[]).plain_choice(),
        Some(RowChoice::GREEDY)
    );
}

#[test]
fn sample_leaves_the_callers_logits_unchanged() {
    let params = SamplingParams {
        logit_bias: vec![(0, 3.0)],
        repetition_penalty: 1.5,
        ..seeded(4)
    };
    let mut sampler = Sampler::new(&params, &[0, 1]);
    let logits = vec![1.0, -1.0, 0.5];
    sampler.sample(&logits);
    assert_eq!(logits, vec![1.0, -1.0, 0.5]);
}

// ------------------------------------------------ filter internals vs refs

fn reference_top_k(logits: &[f32], k: usize) -> Vec<bool> {
    let mut ids: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize] > f32::NEG_INFINITY)
        .collect();
    ids.sort_by(|&a, &b| {
        by_rank(
            (logits[a as usize] as f64, a),
            (logits[b as usize] as f64, b),
        )
    });
    let mut kept = vec![false; logits.len()];
    for &i in ids.iter().take(k) {
        kept[i as usize] = true;
    }
    kept
}

fn reference_top_p(weights: &[f64], top_p: f64) -> Vec<bool> {
    let target = top_p * weights.iter().sum::<f64>();
    let mut ids: Vec<u32> = (0..weights.len() as u32)
        .filter(|&i| weights[i as usize] > 0.0)
        .collect();
    ids.sort_by(|&a, &b| by_rank((weights[a as usize], a), (weights[b as usize], b)));
    let mut kept = vec![false; weights.len()];
    let mut cumulative = 0.0;
    for &i in &ids {
        kept[i as usize] = true;
        cumulative += weights[i as usize];
        if cumulative >= target {
            break;
        }
    }
    kept
}

#[test]
fn top_p_partial_selection_matches_full_sort_on_a_large_vocab() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let logits = random_logits(&mut rng, 49152, 6.0);
    let mut order = Vec::new();
    for top_p in [0.01, 0.5, 0.9, 0.99, 0.999] {
        let mut weights = Vec::new();
        softmax_weights(&logits, 1.0, &mut weights);
        let expected = reference_top_p(&weights, top_p);
        keep_top_p(&mut weights, top_p, &mut order);
        let kept: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
        assert_eq!(kept, expected, "top_p {top_p}");
    }
}

proptest! {
    #[test]
    fn top_k_keeps_exactly_the_k_best(
        values in proptest::collection::vec(-4i8..4, 1..200),
        k in 1usize..40,
    ) {
        let mut logits: Vec<f32> = values.iter().map(|&v| f32::from(v) * 0.5).collect();
        logits[0] = f32::NEG_INFINITY;
        let expected = reference_top_k(&logits, k);
        keep_top_k(&mut logits, k, &mut Vec::new());
        let kept: Vec<bool> = logits.iter().map(|&l| l > f32::NEG_INFINITY).collect();
        prop_assert_eq!(kept, expected);
    }

    #[test]
    fn top_p_keeps_the_smallest_head_reaching_p(
        values in proptest::collection::vec(-6i8..6, 1..400),
        top_p in 0.01f64..1.0,
    ) {
        let logits: Vec<f32> = values.iter().map(|&v| f32::from(v) * 0.25).collect();
        let mut weights = Vec::new();
        softmax_weights(&logits, 1.0, &mut weights);
        let expected = reference_top_p(&weights, top_p);
        keep_top_p(&mut weights, top_p, &mut Vec::new());
        let kept: Vec<bool> = weights.iter().map(|&w| w > 0.0).collect();
        prop_assert_eq!(kept, expected);
    }
}

#[test]
fn draw_walks_kept_tokens_in_id_order() {
    let weights = [0.0, 1.0, 0.0, 3.0];
    assert_eq!(draw(&weights, 0.0), Some(1));
    assert_eq!(draw(&weights, 0.2499), Some(1));
    assert_eq!(draw(&weights, 0.25), Some(3));
    assert_eq!(draw(&weights, 0.9999), Some(3));
    assert_eq!(draw(&[0.0, 0.0], 0.5), None);
}

#[test]
fn degenerate_logits_do_not_panic() {
    let mut sampler = Sampler::new(&seeded(1), &[]);
    assert_eq!(sampler.sample(&[]).token, 0);
    assert_eq!(sampler.sample(&[f32::NAN, f32::NAN]).token, 0);
    assert_eq!(sampler.sample(&[f32::NEG_INFINITY, f32::INFINITY]).token, 1);
}
