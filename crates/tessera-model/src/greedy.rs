//! The greedy token of a logits row, shared by the rank workers (which may pick it on the
//! device) and the engine's sampler.

use std::cmp::Ordering;

/// NaN logits can never be chosen; +inf becomes the largest finite value so that
/// `logit - max` stays finite; -0 becomes +0 so that total ordering sees one zero.
pub fn sanitize_logit(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else if l == f32::INFINITY {
        f32::MAX
    } else {
        l + 0.0
    }
}

/// The greedy token of raw logits: what a greedy sampler without bias or penalties picks
/// (NaN never, +inf as the largest finite value, -0 as +0; then the lowest id among the
/// largest; 0 for empty or all-NaN logits).
pub fn greedy_token(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_value = logits.first().map_or(0.0, |&l| sanitize_logit(l));
    for (i, &l) in logits.iter().enumerate().skip(1) {
        let v = sanitize_logit(l);
        if v.total_cmp(&best_value) == Ordering::Greater {
            best = i;
            best_value = v;
        }
    }
    best as u32
}
