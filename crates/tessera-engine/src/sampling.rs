//! Per-request sampling: turning one row of full-vocabulary logits into the next token.
//!
//! This module owns [`SamplingParams`] (the OpenAI/vLLM request knobs and their
//! validation), the [`Sampler`] that holds one request's RNG and token counts, and the
//! [`StopMatcher`] that finds stop strings in streamed text.
//!
//! One token goes through, in this order:
//!
//! ```text
//! raw logits ─┬─> logit_bias ─> repetition ─> frequency ─> presence ─┬─ temperature 0: argmax
//!             │                                                      └─ / temperature ─> top_k
//!             │                        ─> softmax (f64) ─> top_p ─> min_p ─> one draw by token id
//!             └─> log_softmax (f64) ─> logprobs of the raw model distribution
//! ```
//!
//! Every ranking (argmax, top_k, top_p, top logprobs) orders tokens by descending value
//! and then ascending id, so `top_k = 1` is exactly greedy and ties never depend on the
//! sort algorithm.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Temperatures below this sample greedily, like vLLM: dividing by a tiny temperature
/// only turns the draw into an argmax with overflow risk.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;
/// Most top log-probabilities a request may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Magnitude bound of a `logit_bias` entry; larger entries are clamped (OpenAI's range).
pub const MAX_LOGIT_BIAS: f32 = 100.0;
/// Magnitude bound of `presence_penalty` and `frequency_penalty` (OpenAI's range).
pub const MAX_OPENAI_PENALTY: f32 = 2.0;

/// How many top candidates top_p sorts first; most nuclei are far smaller than the
/// vocabulary, so a partial selection of a growing head avoids a full sort.
const TOP_P_FIRST_CHUNK: usize = 64;

/// An invalid sampling parameter, worded for the API user who sent it.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum SamplingError {
    /// A parameter is outside its allowed range.
    #[error("invalid sampling parameter `{name}`: must be {allowed}, got {value}")]
    InvalidParameter {
        /// The parameter's name as the request spells it.
        name: &'static str,
        /// The allowed values, in words.
        allowed: &'static str,
        /// The value that was sent.
        value: String,
    },
    /// A `logit_bias` entry names a token the model does not have.
    #[error(
        "invalid sampling parameter `logit_bias`: token id {id} is not in the vocabulary \
         (ids must be in 0..{vocab})"
    )]
    UnknownBiasToken {
        /// The token id that was sent.
        id: u32,
        /// The model's vocabulary size.
        vocab: usize,
    },
}

/// Sampling parameters of one request (OpenAI/vLLM semantics).
///
/// Missing fields deserialize to their [`Default`] (the "off" value of each knob).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 (or below [`GREEDY_TEMPERATURE`]) is greedy: argmax, lowest id on ties.
    pub temperature: f32,
    /// Keep only the k most likely tokens; `None` or 0 is off.
    pub top_k: Option<usize>,
    /// Keep the smallest head of tokens whose probabilities sum to at least `top_p`; 1 is off.
    pub top_p: f32,
    /// Keep tokens whose probability is at least `min_p` times the largest; 0 is off.
    pub min_p: f32,
    /// HF/vLLM rule over prompt and output tokens: positive logits divided, negative multiplied; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already in the output (OpenAI).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the output (OpenAI).
    pub frequency_penalty: f32,
    /// `(token id, bias)` pairs added to the logits, each clamped to ±[`MAX_LOGIT_BIAS`].
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the request's RNG; `None` draws a fresh random seed.
    pub seed: Option<u64>,
    /// Most tokens to generate; 0 only computes the prompt (for its `prompt_logprobs`).
    pub max_tokens: usize,
    /// Token ids that end generation.
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation, excluded from the output (see [`StopMatcher`]).
    pub stop: Vec<String>,
    /// Keep generating after the end-of-sequence token.
    pub ignore_eos: bool,
    /// `None`: no logprobs; `Some(n)`: the chosen token's logprob and the top n (n <= 20).
    pub logprobs: Option<usize>,
    /// `None`: none; `Some(n)`: each prompt token's logprob given the tokens before it (none
    /// for the first) and the top n there (n <= 20), from the raw model distribution.
    pub prompt_logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            max_tokens: 16,
            stop_token_ids: Vec::new(),
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Checks every parameter against its allowed range for a model with `vocab` tokens.
    pub fn validate(&self, vocab: usize) -> Result<(), SamplingError> {
        let t = self.temperature;
        check(
            t.is_finite() && t >= 0.0,
            "temperature",
            "a finite number >= 0 (0 = greedy)",
            t,
        )?;
        let top_p = self.top_p;
        check(
            top_p > 0.0 && top_p <= 1.0,
            "top_p",
            "in (0, 1] (1 = off)",
            top_p,
        )?;
        let min_p = self.min_p;
        check(
            (0.0..=1.0).contains(&min_p),
            "min_p",
            "in [0, 1] (0 = off)",
            min_p,
        )?;
        let rep = self.repetition_penalty;
        let rep_ok = rep.is_finite() && rep > 0.0;
        check(
            rep_ok,
            "repetition_penalty",
            "a finite number > 0 (1 = off)",
            rep,
        )?;
        let openai_range = -MAX_OPENAI_PENALTY..=MAX_OPENAI_PENALTY;
        let presence = self.presence_penalty;
        let presence_ok = openai_range.contains(&presence);
        check(
            presence_ok,
            "presence_penalty",
            "in [-2, 2] (0 = off)",
            presence,
        )?;
        let frequency = self.frequency_penalty;
        let frequency_ok = openai_range.contains(&frequency);
        check(
            frequency_ok,
            "frequency_penalty",
            "in [-2, 2] (0 = off)",
            frequency,
        )?;
        if let Some(n) = self.logprobs {
            check(n <= MAX_TOP_LOGPROBS, "logprobs", "at most 20", n)?;
        }
        if let Some(n) = self.prompt_logprobs {
            check(n <= MAX_TOP_LOGPROBS, "prompt_logprobs", "at most 20", n)?;
        }
        for &(id, bias) in &self.logit_bias {
            if id as usize >= vocab {
                return Err(SamplingError::UnknownBiasToken { id, vocab });
            }
            let allowed = "finite numbers (clamped to [-100, 100])";
            check(bias.is_finite(), "logit_bias", allowed, bias)?;
        }
        for stop in &self.stop {
            check(
                !stop.is_empty(),
                "stop",
                "non-empty strings",
                "an empty string",
            )?;
        }
        Ok(())
    }
}

/// Returns an [`SamplingError::InvalidParameter`] unless `ok`.
fn check(
    ok: bool,
    name: &'static str,
    allowed: &'static str,
    value: impl Display,
) -> Result<(), SamplingError> {
    if ok {
        return Ok(());
    }
    Err(SamplingError::InvalidParameter {
        name,
        allowed,
        value: value.to_string(),
    })
}

/// The outcome of one [`Sampler::sample`] call.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampled {
    /// The chosen token id.
    pub token: u32,
    /// The chosen token's logprob under the raw model distribution, when logprobs were requested.
    pub logprob: Option<f32>,
    /// The top-n `(token id, logprob)` pairs of the raw distribution, by descending logprob then id.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Per-request sampler state: RNG (ChaCha8 seeded from `seed`, or from a random seed
/// when `None`) and token counts for penalties.
///
/// It owns everything a draw depends on, so a seeded request gives the same tokens for
/// the same logits whatever else runs in the process. Parameters are used as given:
/// call [`SamplingParams::validate`] first (invalid values degrade, they never panic).
#[derive(Clone, Debug)]
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    /// Clamped biases.
    logit_bias: Vec<(u32, f32)>,
    logprobs: Option<usize>,
    rng: ChaCha8Rng,
    /// Tokens of the prompt and the output, for the repetition penalty.
    seen: BTreeSet<u32>,
    /// Occurrences of each token in the output, for presence and frequency penalties.
    output_counts: BTreeMap<u32, u32>,
    /// Scratch buffers reused across calls: processed logits, weights, ranked candidates.
    logits: Vec<f32>,
    weights: Vec<f64>,
    ranked: Vec<RankKey>,
}

impl Sampler {
    /// Creates the sampler of a request whose prompt is `prompt`.
    pub fn new(params: &SamplingParams, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or_else(rand::random);
        let logit_bias = params
            .logit_bias
            .iter()
            .map(|&(id, bias)| (id, bias.clamp(-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)))
            .collect();
        Self {
            temperature: params.temperature,
            top_k: params.top_k.unwrap_or(0),
            top_p: params.top_p,
            min_p: params.min_p,
            repetition_penalty: params.repetition_penalty,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            logit_bias,
            logprobs: params.logprobs,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seen: prompt.iter().copied().collect(),
            output_counts: BTreeMap::new(),
            logits: Vec::new(),
            weights: Vec::new(),
            ranked: Vec::new(),
        }
    }

    /// Picks the next token from full-vocabulary logits (left unmodified), counts it
    /// for the penalties, and returns it with logprobs when they were requested.
    ///
    /// Empty logits give token 0.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        self.prepare_logits(logits);
        let token = if self.is_greedy() {
            argmax(&self.logits)
        } else {
            self.draw_token()
        };
        *self.output_counts.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
        let (logprob, top_logprobs) = match self.logprobs {
            Some(n) => raw_logprobs(logits, token, n),
            None => (None, Vec::new()),
        };
        Sampled {
            token,
            logprob,
            top_logprobs,
        }
    }

    /// Whether [`Sampler::sample`] would return [`greedy_token`] of the raw logits with no
    /// logprobs: greedy, no bias, no penalty, no logprobs requested.
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy()
            && self.logit_bias.is_empty()
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && self.logprobs.is_none()
    }

    /// Records `token`, chosen elsewhere by this sampler's rule (see
    /// [`Sampler::is_plain_greedy`]), as if [`Sampler::sample`] had drawn it.
    pub fn accept(&mut self, token: u32) -> Sampled {
        *self.output_counts.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
        Sampled {
            token,
            logprob: None,
            top_logprobs: Vec::new(),
        }
    }

    /// NaN and negative temperatures (rejected by `validate`) fall back to greedy.
    fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature < GREEDY_TEMPERATURE
    }

    /// Copies `raw` into the scratch buffer and applies bias and penalties there.
    fn prepare_logits(&mut self, raw: &[f32]) {
        self.logits.clear();
        self.logits.extend_from_slice(raw);
        for &(id, bias) in &self.logit_bias {
            if let Some(l) = self.logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        let rep = self.repetition_penalty;
        if rep != 1.0 {
            for &id in &self.seen {
                if let Some(l) = self.logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / rep } else { *l * rep };
                }
            }
        }
        let (presence, frequency) = (self.presence_penalty, self.frequency_penalty);
        if presence != 0.0 || frequency != 0.0 {
            for (&id, &count) in &self.output_counts {
                if let Some(l) = self.logits.get_mut(id as usize) {
                    *l -= frequency * count as f32;
                    *l -= presence;
                }
            }
        }
        for l in &mut self.logits {
            *l = sanitize(*l);
        }
    }

    /// Temperature, filters and one uniform draw over the processed logits.
    fn draw_token(&mut self) -> u32 {
        if self.top_k > 0 {
            keep_top_k(&mut self.logits, self.top_k, &mut self.ranked);
        }
        let total = softmax_weights(&self.logits, self.temperature, &mut self.weights);
        if total.is_nan() || total <= 0.0 {
            return argmax(&self.logits);
        }
        if self.top_p < 1.0 {
            keep_top_p(&mut self.weights, f64::from(self.top_p), &mut self.ranked);
        }
        if self.min_p > 0.0 {
            keep_min_p(&mut self.weights, f64::from(self.min_p));
        }
        let u: f64 = self.rng.random();
        draw(&self.weights, u).unwrap_or_else(|| argmax(&self.logits))
    }
}

/// Sort key of a token: ascending keys rank tokens by descending value, then ascending
/// id. Plain integer keys make the selections below several times faster than
/// comparing floats through indices.
type RankKey = (u64, u32);

/// The [`RankKey`] of `value` (never NaN) for token `id`; agrees with `f64::total_cmp`.
fn rank_key(value: f64, id: u32) -> RankKey {
    let bits = value.to_bits();
    let ascending = if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    };
    (!ascending, id)
}

/// The greedy token of raw logits (lives beside the model, where rank workers use it).
pub use tessera_model::greedy_token;
use tessera_model::sanitize_logit as sanitize;

/// The first token by [`rank_key`]; 0 for empty logits.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate().skip(1) {
        if l.total_cmp(&logits[best]) == Ordering::Greater {
            best = i;
        }
    }
    best as u32
}

/// Sets to -inf every logit ranked after the k-th, using an O(n) selection.
fn keep_top_k(logits: &mut [f32], k: usize, ranked: &mut Vec<RankKey>) {
    ranked.clear();
    ranked.extend(
        (logits.iter().enumerate())
            .filter(|(_, l)| **l > f32::NEG_INFINITY)
            .map(|(i, &l)| rank_key(f64::from(l), i as u32)),
    );
    if k == 0 || k >= ranked.len() {
        return;
    }
    let (_, &mut pivot, _) = ranked.select_nth_unstable(k - 1);
    for (i, l) in logits.iter_mut().enumerate() {
        if rank_key(f64::from(*l), i as u32) > pivot {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Fills `weights` with `exp((logit - max) / temperature)` and returns their sum.
fn softmax_weights(logits: &[f32], temperature: f32, weights: &mut Vec<f64>) -> f64 {
    weights.clear();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        weights.resize(logits.len(), 0.0);
        return 0.0;
    }
    let (max, t) = (f64::from(max), f64::from(temperature));
    weights.extend(logits.iter().map(|&l| ((f64::from(l) - max) / t).exp()));
    weights.iter().sum()
}

/// Zeroes every weight outside the smallest head (by [`rank_key`]) whose sum reaches
/// `top_p` of the total. The head is found by selecting and sorting chunks of growing
/// size, so a small nucleus costs O(n), not a full sort.
fn keep_top_p(weights: &mut [f64], top_p: f64, ranked: &mut Vec<RankKey>) {
    ranked.clear();
    ranked.extend(
        (weights.iter().enumerate())
            .filter(|(_, w)| **w > 0.0)
            .map(|(i, &w)| rank_key(w, i as u32)),
    );
    let target = top_p * weights.iter().sum::<f64>();
    let (mut sorted, mut chunk, mut cumulative) = (0, TOP_P_FIRST_CHUNK, 0.0);
    let mut last_kept = None;
    'chunks: while sorted < ranked.len() {
        let rest = &mut ranked[sorted..];
        let take = chunk.min(rest.len());
        if take < rest.len() {
            rest.select_nth_unstable(take - 1);
        }
        rest[..take].sort_unstable();
        for &key in &rest[..take] {
            cumulative += weights[key.1 as usize];
            if cumulative >= target {
                last_kept = Some(key);
                break 'chunks;
            }
        }
        sorted += take;
        chunk *= 4;
    }
    let Some(pivot) = last_kept else { return };
    for (i, w) in weights.iter_mut().enumerate() {
        if rank_key(*w, i as u32) > pivot {
            *w = 0.0;
        }
    }
}

/// Zeroes every weight below `min_p` times the largest.
fn keep_min_p(weights: &mut [f64], min_p: f64) {
    let threshold = min_p * weights.iter().copied().fold(0.0, f64::max);
    for w in weights.iter_mut().filter(|w| **w < threshold) {
        *w = 0.0;
    }
}

/// Picks the token where the running sum of weights, in token id order, first exceeds
/// `u` (in [0, 1)) times the total; `None` when every weight is zero.
fn draw(weights: &[f64], u: f64) -> Option<u32> {
    let target = u * weights.iter().sum::<f64>();
    let mut cumulative = 0.0;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate().filter(|(_, w)| **w > 0.0) {
        cumulative += w;
        last = Some(i as u32);
        if cumulative > target {
            break;
        }
    }
    last
}

/// The logprob of `token` under the raw distribution `logits` (a full-vocabulary row) and
/// the top `n` `(id, logprob)` pairs there, ranked as [`Sampler::sample`] ranks them.
///
/// For scoring given tokens (prompt logprobs); `token` outside the row gives `-inf`.
pub fn token_logprobs(logits: &[f32], token: u32, n: usize) -> (f32, Vec<(u32, f32)>) {
    let (chosen, top) = raw_logprobs(logits, token, n);
    (chosen.unwrap_or(f32::NEG_INFINITY), top)
}

/// The chosen token's logprob and the top `n` of the raw distribution, in f64.
fn raw_logprobs(raw: &[f32], token: u32, n: usize) -> (Option<f32>, Vec<(u32, f32)>) {
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

/// What [`StopMatcher::push`] found in one text delta.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopStep {
    /// Text that is safe to show now.
    pub emit: String,
    /// A stop string completed: generation ends, nothing more is emitted.
    pub stopped: bool,
}

/// Finds stop strings in streamed text and holds back what could still become one.
///
/// A stop fires at the first position where some stop string ends (the longest one if
/// several end there), as if text arrived one character at a time; so the outcome does
/// not depend on how the text is split into deltas. The stop string and everything
/// after it are excluded from the output, as in OpenAI's API.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Length in bytes of the longest stop string.
    longest: usize,
    /// Received text not emitted yet: a suffix that may begin a stop string.
    pending: String,
    /// All emitted text.
    text: String,
    /// Index in `stops` of the stop string that fired.
    matched: Option<usize>,
}

impl StopMatcher {
    /// Creates a matcher for `stops`; empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self {
            stops,
            longest,
            ..Self::default()
        }
    }

    /// Feeds the next text delta; returns what can be shown and whether a stop fired.
    pub fn push(&mut self, delta: &str) -> StopStep {
        if self.matched.is_some() {
            return StopStep {
                emit: String::new(),
                stopped: true,
            };
        }
        self.pending.push_str(delta);
        if let Some((start, which)) = first_completed(&self.pending, &self.stops) {
            self.pending.truncate(start);
            let emit = std::mem::take(&mut self.pending);
            self.text.push_str(&emit);
            self.matched = Some(which);
            return StopStep {
                emit,
                stopped: true,
            };
        }
        let cut = self.held_back_from();
        let emit: String = self.pending.drain(..cut).collect();
        self.text.push_str(&emit);
        StopStep {
            emit,
            stopped: false,
        }
    }

    /// Ends the stream without a stop: returns the held-back text (empty after a stop).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.text.push_str(&rest);
        rest
    }

    /// All text emitted so far; after a stop, the final output, cut before the stop string.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether a stop string fired.
    pub fn stopped(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that fired, for the response's `stop_reason`.
    pub fn matched_stop(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Byte offset of the earliest suffix of `pending` that is a proper prefix of a stop
    /// string; text before it can never be part of a match.
    fn held_back_from(&self) -> usize {
        let len = self.pending.len();
        let from = len.saturating_sub(self.longest.saturating_sub(1));
        (from..len)
            .filter(|&s| self.pending.is_char_boundary(s))
            .find(|&s| {
                let tail = &self.pending[s..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(len)
    }
}

/// `(start, stop index)` of the stop string that ends first in `text`, the longest on ties.
fn first_completed(text: &str, stops: &[String]) -> Option<(usize, usize)> {
    stops
        .iter()
        .enumerate()
        .filter_map(|(i, stop)| text.find(stop.as_str()).map(|at| (at + stop.len(), at, i)))
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, start, i)| (start, i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;

    /// Reference ranking, independent of [`rank_key`]: `Less` when `a` comes first.
    fn by_rank(a: (f64, u32), b: (f64, u32)) -> Ordering {
        b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
    }

    fn seeded(seed: u64) -> SamplingParams {
        SamplingParams {
            seed: Some(seed),
            ..SamplingParams::default()
        }
    }

    fn greedy() -> SamplingParams {
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

    fn random_logits(rng: &mut ChaCha8Rng, vocab: usize, scale: f32) -> Vec<f32> {
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
        assert!(sampler.is_plain_greedy());
        for row in rows {
            assert_eq!(greedy_token(row), sampler.sample(row).token, "{row:?}");
        }
        let biased = SamplingParams {
            logit_bias: vec![(1, 2.0)],
            ..greedy()
        };
        assert!(!Sampler::new(&biased, &[]).is_plain_greedy());
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

    // -------------------------------------------------------------- validate

    #[test]
    fn validate_accepts_defaults_and_boundary_values() {
        assert_eq!(SamplingParams::default().validate(10), Ok(()));
        let edges = SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            min_p: 1.0,
            presence_penalty: -2.0,
            frequency_penalty: 2.0,
            repetition_penalty: 0.01,
            logit_bias: vec![(9, -1000.0)],
            logprobs: Some(20),
            max_tokens: 0,
            prompt_logprobs: Some(20),
            stop: vec!["x".into()],
            ..SamplingParams::default()
        };
        assert_eq!(edges.validate(10), Ok(()));
    }

    #[test]
    fn validate_rejects_each_bad_parameter_by_name() {
        type Edit = fn(&mut SamplingParams);
        let cases: [(&str, Edit); 18] = [
            ("temperature", |p| p.temperature = f32::NAN),
            ("temperature", |p| p.temperature = -0.1),
            ("temperature", |p| p.temperature = f32::INFINITY),
            ("top_p", |p| p.top_p = 0.0),
            ("top_p", |p| p.top_p = 1.01),
            ("top_p", |p| p.top_p = f32::NAN),
            ("min_p", |p| p.min_p = -0.1),
            ("min_p", |p| p.min_p = 1.5),
            ("repetition_penalty", |p| p.repetition_penalty = 0.0),
            ("repetition_penalty", |p| p.repetition_penalty = -1.0),
            ("presence_penalty", |p| p.presence_penalty = 2.5),
            ("frequency_penalty", |p| p.frequency_penalty = -2.01),
            ("logprobs", |p| p.logprobs = Some(21)),
            ("prompt_logprobs", |p| p.prompt_logprobs = Some(21)),
            ("logit_bias", |p| p.logit_bias = vec![(10, 1.0)]),
            ("logit_bias", |p| p.logit_bias = vec![(1, f32::NAN)]),
            ("stop", |p| p.stop = vec!["ok".into(), String::new()]),
            ("frequency_penalty", |p| p.frequency_penalty = f32::NAN),
        ];
        for (name, edit) in cases {
            let mut params = SamplingParams::default();
            edit(&mut params);
            let message = match params.validate(10) {
                Err(e) => e.to_string(),
                Ok(()) => panic!("accepted a bad `{name}`: {params:?}"),
            };
            assert!(message.contains(&format!("`{name}`")), "{message}");
            assert!(message.contains("must be"), "{message}");
        }
    }

    #[test]
    fn missing_json_fields_take_their_defaults() {
        let params: SamplingParams =
            serde_json::from_str(r#"{"temperature": 0.5, "logit_bias": [[3, -100.0]]}"#).unwrap();
        let expected = SamplingParams {
            temperature: 0.5,
            logit_bias: vec![(3, -100.0)],
            ..SamplingParams::default()
        };
        assert_eq!(params, expected);
    }

    // ----------------------------------------------------------- StopMatcher

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// One-shot search: the first position where a stop string ends (longest on ties).
    fn reference_stop(text: &str, stops: &[String]) -> (String, bool) {
        for end in (1..=text.len()).filter(|&e| text.is_char_boundary(e)) {
            let head = &text[..end];
            let longest = stops
                .iter()
                .filter(|s| !s.is_empty() && head.ends_with(s.as_str()))
                .map(String::len)
                .max();
            if let Some(len) = longest {
                return (head[..end - len].to_string(), true);
            }
        }
        (text.to_string(), false)
    }

    /// Streams `deltas` and returns (everything emitted, stopped); checks `text()`.
    fn stream(deltas: &[&str], stops: &[String]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops);
        let mut emitted = String::new();
        let mut stopped = false;
        for delta in deltas {
            let step = matcher.push(delta);
            assert!(!stopped || step.emit.is_empty(), "emitted after a stop");
            emitted.push_str(&step.emit);
            stopped |= step.stopped;
        }
        emitted.push_str(&matcher.finish());
        assert_eq!(matcher.text(), emitted);
        assert_eq!(matcher.stopped(), stopped);
        (emitted, stopped)
    }

    fn boundaries(text: &str) -> Vec<usize> {
        (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect()
    }

    #[test]
    fn stop_matcher_matches_one_shot_for_every_split() {
        let cases: [(&str, &[&str]); 8] = [
            ("Hello world. The end. More", &["The end"]),
            ("abcabcabd tail", &["abd"]),
            ("aaab", &["aab"]),
            ("xxabcd", &["abcd", "bc"]),
            ("one stop two stops", &["stops", "stop"]),
            ("héllo wörld", &["ö", "wör"]),
            ("no stop here at all", &["STOP", "zz"]),
            ("end at the very end", &["very end"]),
        ];
        for (text, list) in cases {
            let stops = stops(list);
            let expected = reference_stop(text, &stops);
            let cuts = boundaries(text);
            for &i in &cuts {
                for &j in cuts.iter().filter(|&&j| j >= i) {
                    let deltas = [&text[..i], &text[i..j], &text[j..]];
                    assert_eq!(stream(&deltas, &stops), expected, "{text:?} split {i}, {j}");
                }
            }
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(stream(&chars, &stops), expected, "{text:?} by chars");
        }
    }

    #[test]
    fn stop_matcher_holds_back_a_partial_match_until_it_fails() {
        let mut matcher = StopMatcher::new(&stops(&["END"]));
        assert_eq!(matcher.push("abcE").emit, "abc");
        assert_eq!(matcher.push("N").emit, "");
        let step = matcher.push("x");
        assert_eq!((step.emit.as_str(), step.stopped), ("ENx", false));
        assert_eq!(matcher.push("EN").emit, "");
        assert_eq!(matcher.finish(), "EN");
        assert_eq!(matcher.text(), "abcENxEN");
    }

    #[test]
    fn stop_matcher_cuts_before_the_stop_and_reports_it() {
        let mut matcher = StopMatcher::new(&stops(&["\n\n", "END"]));
        assert_eq!(matcher.push("answer: 4").emit, "answer: 4");
        assert_eq!(matcher.push(" E").emit, " ");
        let step = matcher.push("ND and more");
        assert_eq!((step.emit.as_str(), step.stopped), ("", true));
        assert_eq!(matcher.push("later").emit, "");
        assert_eq!(matcher.finish(), "");
        assert_eq!(matcher.text(), "answer: 4 ");
        assert_eq!(matcher.matched_stop(), Some("END"));
    }

    #[test]
    fn stop_matcher_without_stops_emits_everything_at_once() {
        let mut matcher = StopMatcher::new(&stops(&[""]));
        assert_eq!(matcher.push("abc").emit, "abc");
        assert!(!matcher.stopped());
    }

    proptest! {
        #[test]
        fn stop_matcher_is_independent_of_delta_boundaries(
            text in "[abé]{0,24}",
            list in proptest::collection::vec("[abé]{1,4}", 1..4),
            splits in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let stops: Vec<String> = list;
            let cuts = boundaries(&text);
            let mut points: Vec<usize> = splits.iter().map(|s| cuts[s % cuts.len()]).collect();
            points.push(0);
            points.push(text.len());
            points.sort_unstable();
            let deltas: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(stream(&deltas, &stops), reference_stop(&text, &stops));
        }
    }
}
