//! How a logits row becomes a token without any request state: a [`RowChoice`]
//! (temperature, top-k, top-p and the row's one uniform draw) and [`RowChooser`], the host
//! form of the rule the device sampler (`cuda/sampling.cu`, `sample_rows_f32`) runs, so a
//! CPU rank, a GPU rank and the engine's sampler pick the same token from the same row.
//!
//! For a temperature above 0 (else [`greedy_token`]):
//!
//! ```text
//! logits ─> keep the top_k largest ─> keep the smallest most-probable head whose mass
//!           (ties kept together)      reaches top_p of the kept mass (ties kept together)
//!        ─> weights exp((l - max) / T) ─> the first kept id whose running weight, in id
//!                                         order, exceeds uniform × kept weight
//! ```
//!
//! NaN and -inf logits are never chosen; +inf counts as the largest finite value (see
//! [`sanitize_logit`]). The device sums in f32 and in another order, so near a boundary it
//! may pick a neighbour; [`RowChooser::accepts`] states that tolerance for op checks.

use crate::greedy::{greedy_token, sanitize_logit};

/// How top-p sorts the head first: most nuclei are far smaller than the vocabulary, so a
/// partial selection of a growing head avoids sorting it all.
const FIRST_HEAD_CHUNK: usize = 64;

/// How one row's token is chosen: greedy, or one draw from the filtered softmax.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowChoice {
    /// Softmax temperature; 0 or less (or NaN) picks the greedy token.
    pub temperature: f32,
    /// Keep the k largest logits (0 = all).
    pub top_k: usize,
    /// Keep the smallest most-probable set of this share of the kept mass (1 = all).
    pub top_p: f32,
    /// The row's uniform draw in [0, 1).
    pub uniform: f32,
}

impl RowChoice {
    /// The greedy choice.
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        uniform: 0.0,
    };

    /// Whether this choice is the greedy token (temperature 0 or below, or NaN).
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0
    }
}

/// The token `choice` picks from `logits` (a full-vocabulary row); see [`RowChooser`].
pub fn choose(logits: &[f32], choice: &RowChoice) -> u32 {
    RowChooser::default().choose(logits, choice)
}

/// The kept set of one row: logits at or above `floor` with a positive weight.
#[derive(Clone, Copy, Debug)]
struct Kept {
    floor: f32,
    total: f64,
}

/// The rule of the module doc, with scratch buffers kept between rows so that choosing
/// allocates nothing once they have grown to the vocabulary.
#[derive(Clone, Debug, Default)]
pub struct RowChooser {
    /// The row's logits through [`sanitize_logit`].
    values: Vec<f32>,
    /// `exp((value - max) / temperature)` of each value.
    weights: Vec<f64>,
    /// Values above -inf, partly sorted while top-k and top-p look for their floor.
    head: Vec<f32>,
}

impl RowChooser {
    /// The token `choice` picks from `logits`: [`greedy_token`] for a greedy choice or a
    /// row without a finite number, else the draw of the module doc.
    pub fn choose(&mut self, logits: &[f32], choice: &RowChoice) -> u32 {
        if choice.is_greedy() {
            return greedy_token(logits);
        }
        self.sample(logits, choice)
            .map_or_else(|| greedy_token(logits), |i| i as u32)
    }

    /// The draw of the module doc for a sampled choice; `None` when no logit can be kept
    /// (all NaN or -inf, or an empty row).
    pub fn sample(&mut self, logits: &[f32], choice: &RowChoice) -> Option<usize> {
        let kept = self.prepare(logits, choice, choice.top_p)?;
        let target = f64::from(choice.uniform) * kept.total;
        let mut run = 0.0;
        let mut last = None;
        for (i, (&v, &w)) in self.values.iter().zip(&self.weights).enumerate() {
            if v >= kept.floor && w > 0.0 {
                run += w;
                last = Some(i);
                if run > target {
                    return Some(i);
                }
            }
        }
        last
    }

    /// Whether `pick` is a right draw of `choice` up to `tol` of probability mass, for a
    /// sampler that sums in another order or precision (the device's f32): a draw within
    /// `tol` of a boundary (of the nucleus, or between two tokens) may land on either side.
    /// `pick` must be kept under a nucleus of `top_p + tol`, and its share of the running
    /// mass (id order) must hold the uniform within `tol`. A greedy choice accepts only
    /// [`greedy_token`].
    pub fn accepts(&mut self, logits: &[f32], choice: &RowChoice, pick: usize, tol: f64) -> bool {
        if choice.is_greedy() {
            return pick == greedy_token(logits) as usize;
        }
        let loose = (choice.top_p + tol as f32).min(1.0);
        let Some(loose) = self.prepare(logits, choice, loose) else {
            return false;
        };
        let kept_loosely = self.values.get(pick).is_some_and(|&v| v >= loose.floor);
        if !kept_loosely || self.weights[pick] <= 0.0 {
            return false;
        }
        let Some(kept) = self.prepare(logits, choice, choice.top_p) else {
            return false;
        };
        let before: f64 = (self.values[..pick].iter().zip(&self.weights[..pick]))
            .filter(|&(&v, &w)| v >= kept.floor && w > 0.0)
            .map(|(_, &w)| w)
            .sum::<f64>()
            / kept.total;
        let after = before + self.weights[pick] / kept.total;
        (before - tol..=after + tol).contains(&f64::from(choice.uniform))
    }

    /// Fills the scratch buffers for `logits` and finds the kept set under `choice` with
    /// nucleus `top_p`; `None` when no logit is finite.
    fn prepare(&mut self, logits: &[f32], choice: &RowChoice, top_p: f32) -> Option<Kept> {
        self.values.clear();
        self.values
            .extend(logits.iter().map(|&l| sanitize_logit(l)));
        let max = self
            .values
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return None;
        }
        let (max, inv_t) = (f64::from(max), 1.0 / f64::from(choice.temperature));
        self.weights.clear();
        self.weights
            .extend((self.values.iter()).map(|&v| ((f64::from(v) - max) * inv_t).exp()));
        let floor = self.floor(choice.top_k, top_p, |v| {
            ((f64::from(v) - max) * inv_t).exp()
        });
        let total = (self.values.iter().zip(&self.weights))
            .filter(|&(&v, &w)| v >= floor && w > 0.0)
            .map(|(_, &w)| w)
            .sum();
        Some(Kept { floor, total })
    }

    /// The smallest kept value: the k-th largest (ties kept), raised to the smallest value
    /// of the most-probable head whose weight reaches `top_p` of the weight left.
    fn floor(&mut self, top_k: usize, top_p: f32, weight: impl Fn(f32) -> f64) -> f32 {
        let descending = |a: &f32, b: &f32| b.total_cmp(a);
        self.head.clear();
        self.head
            .extend((self.values.iter().copied()).filter(|&v| v > f32::NEG_INFINITY));
        let mut floor = f32::NEG_INFINITY;
        if top_k > 0 && top_k < self.head.len() {
            floor = *self.head.select_nth_unstable_by(top_k - 1, descending).1;
            self.head.retain(|&v| v >= floor);
        }
        // A NaN top_p (refused by request validation) filters nothing.
        if top_p.is_nan() || top_p >= 1.0 {
            return floor;
        }
        let left: f64 = (self.values.iter().zip(&self.weights))
            .filter(|&(&v, _)| v >= floor)
            .map(|(_, &w)| w)
            .sum();
        let target = f64::from(top_p) * left;
        let (mut sorted, mut chunk, mut run) = (0, FIRST_HEAD_CHUNK, 0.0);
        while sorted < self.head.len() {
            let rest = &mut self.head[sorted..];
            let take = chunk.min(rest.len());
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, descending);
            }
            rest[..take].sort_unstable_by(descending);
            for &v in &rest[..take] {
                run += weight(v);
                if run >= target {
                    return floor.max(v);
                }
            }
            sorted += take;
            chunk *= 4;
        }
        floor
    }
}

#[cfg(test)]
#[path = "choice_tests.rs"]
mod tests;
