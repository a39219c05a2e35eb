//! Tests of the logprobs the sampler reports.

use super::tests::{greedy, random_logits, seeded};
use super::*;

// -------------------------------------------------------------- logprobs

/// f64 log_softmax and the ids sorted by descending logit then id.
fn reference_logprobs(logits: &[f32]) -> (Vec<f64>, Vec<u32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    let lp: Vec<f64> = logits.iter().map(|&l| l as f64 - lse).collect();
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
    (lp, ids)
}

#[test]
fn logprobs_are_log_softmax_of_raw_logits() {
    let params = SamplingParams {
        temperature: 0.7,
        top_k: Some(40),
        logit_bias: vec![(3, 5.0)],
        repetition_penalty: 1.3,
        frequency_penalty: 0.4,
        logprobs: Some(5),
        ..seeded(13)
    };
    let mut sampler = Sampler::new(&params, &[3, 4]);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for _ in 0..20 {
        let logits = random_logits(&mut rng, 1000, 12.0);
        let (lp, ids) = reference_logprobs(&logits);
        let out = sampler.sample(&logits);
        let chosen = out.logprob.unwrap();
        assert_eq!(chosen, lp[out.token as usize] as f32);
        let expected: Vec<(u32, f32)> = ids[..5]
            .iter()
            .map(|&i| (i, lp[i as usize] as f32))
            .collect();
        assert_eq!(out.top_logprobs, expected);
    }
}

#[test]
fn token_logprobs_score_a_given_token_like_the_sampler_reports_it() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let logits = random_logits(&mut rng, 500, 8.0);
    let params = SamplingParams {
        logprobs: Some(4),
        ..greedy()
    };
    let out = Sampler::new(&params, &[]).sample(&logits);
    assert_eq!(
        token_logprobs(&logits, out.token, 4),
        (out.logprob.unwrap(), out.top_logprobs)
    );
    let (lp, _) = reference_logprobs(&logits);
    let (chosen, top) = token_logprobs(&logits, 17, 0);
    assert_eq!((chosen, top.len()), (lp[17] as f32, 0));
    assert_eq!(token_logprobs(&logits, 500, 1).0, f32::NEG_INFINITY);
}

#[test]
fn top_logprobs_break_ties_by_id() {
    let params = SamplingParams {
        logprobs: Some(3),
        ..greedy()
    };
    let out = Sampler::new(&params, &[]).sample(&[1.0, 3.0, 3.0, 1.0, 3.0, 2.0]);
    let ids: Vec<u32> = out.top_logprobs.iter().map(|&(id, _)| id).collect();
    assert_eq!(ids, vec![1, 2, 4]);
    let lp = out.top_logprobs[0].1;
    assert!(out.top_logprobs.iter().all(|&(_, l)| l == lp));
}

#[test]
fn logprobs_are_only_returned_when_requested() {
    let logits = [0.0, 1.0, 2.0];
    let none = Sampler::new(&greedy(), &[]).sample(&logits);
    assert_eq!((none.logprob, none.top_logprobs.len()), (None, 0));
    let zero = SamplingParams {
        logprobs: Some(0),
        ..greedy()
    };
    let chosen_only = Sampler::new(&zero, &[]).sample(&logits);
    assert!(chosen_only.logprob.is_some() && chosen_only.top_logprobs.is_empty());
}
