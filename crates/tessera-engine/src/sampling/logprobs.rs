//! Log-probabilities of the raw model distribution: the chosen token's and the top n, as
//! [`super::Sampler::sample`] reports them and prompt scoring asks for them.

use super::{rank_key, sanitize, RankKey};

/// The logprob of `token` under the raw distribution `logits` (a full-vocabulary row) and
/// the top `n` `(id, logprob)` pairs there, ranked as [`super::Sampler::sample`] ranks them.
///
/// For scoring given tokens (prompt logprobs); `token` outside the row gives `-inf`.
pub fn token_logprobs(logits: &[f32], token: u32, n: usize) -> (f32, Vec<(u32, f32)>) {
    let (chosen, top) = raw_logprobs(logits, token, n);
    (chosen.unwrap_or(f32::NEG_INFINITY), top)
}

/// The chosen token's logprob and the top `n` of the raw distribution, in f64.
pub(super) fn raw_logprobs(raw: &[f32], token: u32, n: usize) -> (Option<f32>, Vec<(u32, f32)>) {
    let value = |l: f32| f64::from(sanitize(l));
    let max = raw
        .iter()
        .map(|&l| value(l))
        .fold(f64::NEG_INFINITY, f64::max);
    let log_norm = if max.is_finite() {
        max + raw
            .iter()
            .map(|&l| (value(l) - max).exp())
            .sum::<f64>()
            .ln()
    } else {
        0.0
    };
    let chosen = raw
        .get(token as usize)
        .map(|&l| (value(l) - log_norm) as f32);
    let mut top: Vec<RankKey> = Vec::with_capacity(n + 1);
    for (i, &l) in raw.iter().enumerate().take_while(|_| n > 0) {
        let entry = rank_key(value(l), i as u32);
        if top.len() == n && top.last().is_some_and(|&worst| entry > worst) {
            continue;
        }
        let at = top.partition_point(|&e| e < entry);
        top.insert(at, entry);
        top.truncate(n);
    }
    let top = top
        .into_iter()
        .map(|(_, id)| (id, (value(raw[id as usize]) - log_norm) as f32))
        .collect();
    (chosen, top)
}
