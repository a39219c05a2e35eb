//! Per-request sampling: turning one row of full-vocabulary logits into the next token.
//!
//! This module owns [`SamplingParams`] (the OpenAI/vLLM request knobs and their
//! validation), the [`Sampler`] that holds one request's RNG and token counts, and the
//! [`StopMatcher`] that finds stop strings in streamed text.
//!
//! A request that asks for nothing but temperature, top-k and top-p (no bias, penalty or
//! min_p) picks by the rule the ranks share, `tessera_model::RowChooser`: one uniform drawn
//! from the request's RNG per token, so the token is the same whether a rank picked it
//! (on a GPU, where the logits are) or this sampler did from a downloaded row. Any other
//! request's token goes through, in this order (logprobs, the last line, come from the raw
//! row for both kinds):
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

mod logprobs;
mod stop;
use logprobs::raw_logprobs;
pub use logprobs::token_logprobs;
pub use stop::{StopMatcher, StopStep};

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
    /// The shared row rule, for requests that need nothing but temperature, top-k, top-p.
    chooser: RowChooser,
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
            chooser: RowChooser::default(),
        }
    }

    /// Picks the next token from full-vocabulary logits (left unmodified), counts it
    /// for the penalties, and returns it with logprobs when they were requested.
    ///
    /// A request with no bias, penalty or min_p picks by the rule the ranks share
    /// ([`RowChooser`], one uniform draw per token), so its token is the one a rank's
    /// [`Sampler::plain_choice`] picks from the same row, whichever way the step ran.
    /// Empty logits give token 0.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let token = if self.is_choice_only() {
            let choice = self.next_choice();
            self.chooser.choose(logits, &choice)
        } else {
            self.prepare_logits(logits);
            if self.is_greedy() {
                argmax(&self.logits)
            } else {
                self.draw_token()
            }
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

    /// Whether the next token needs nothing but a [`RowChoice`] of the raw logits row:
    /// temperature, top-k and top-p only (no bias, penalty, min_p or logprobs), so a rank
    /// may pick it and return only the id.
    pub fn is_plain(&self) -> bool {
        self.is_choice_only() && self.logprobs.is_none()
    }

    /// For a plain sampler ([`Sampler::is_plain`]), the next token's choice, drawing its
    /// uniform from this request's RNG as [`Sampler::sample`] would (greedy draws
    /// nothing); `None` otherwise. Report the token picked with [`Sampler::accept`].
    pub fn plain_choice(&mut self) -> Option<RowChoice> {
        self.is_plain().then(|| self.next_choice())
    }

    /// Records `token`, chosen elsewhere by this sampler's rule (see
    /// [`Sampler::plain_choice`]), as if [`Sampler::sample`] had drawn it.
    pub fn accept(&mut self, token: u32) -> Sampled {
        *self.output_counts.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
        Sampled {
            token,
            logprob: None,
            top_logprobs: Vec::new(),
        }
    }

    /// No bias, penalty or min_p: the token is a [`RowChoice`] of the raw logits.
    fn is_choice_only(&self) -> bool {
        self.logit_bias.is_empty()
            && self.repetition_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
            && (self.min_p.is_nan() || self.min_p <= 0.0)
    }

    /// The next token's [`RowChoice`]; a sampled one draws the uniform. `top_k = 1` is
    /// greedy (the lowest id among the largest), as in [`Sampler::sample`]'s own rule.
    fn next_choice(&mut self) -> RowChoice {
        if self.is_greedy() || self.top_k == 1 {
            return RowChoice::GREEDY;
        }
        RowChoice {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            uniform: self.rng.random::<f32>(),
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
use tessera_model::{RowChoice, RowChooser};

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

#[cfg(test)]
#[path = "sampling_logprobs_tests.rs"]
mod logprobs_tests;
#[cfg(test)]
#[path = "sampling_tests.rs"]
mod tests;
#[cfg(test)]
#[path = "sampling_validate_tests.rs"]
mod validate_tests;
