//! From OpenAI request fields to the engine's [`SamplingParams`], with every check that
//! needs the model: context length, vocabulary, `n`.
//!
//! The rules: `max_tokens` defaults to the rest of the context after the prompt (like
//! vLLM); a prompt that leaves no room, or `max_tokens` past the context, is refused;
//! `max_tokens: 0` asks for no token (the prompt alone, which may then fill the context);
//! `n` copies of a seeded request get seeds `seed, seed + 1, ...` so that they differ but
//! each stays reproducible.

use tessera_engine::sampling::{SamplingError, SamplingParams};
use tessera_engine::Request;

use crate::error::ServerError;
use crate::request::CommonParams;

/// What a request is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Vocabulary size.
    pub vocab: usize,
    /// Most tokens (prompt + completion) one request may use.
    pub max_model_len: usize,
    /// Most completions per prompt (`n`).
    pub max_n: usize,
}

/// The sampling part of a request, checked, before any prompt is known.
#[derive(Clone, Debug)]
pub struct Sampling {
    /// Parameters shared by every choice (`max_tokens` is set per prompt).
    pub params: SamplingParams,
    /// The requested `max_tokens`, if any.
    pub max_tokens: Option<usize>,
    /// Completions per prompt.
    pub n: usize,
}

/// Checks the shared fields and builds the sampling parameters.
///
/// `max_tokens` is the effective request value (chat: `max_completion_tokens` or
/// `max_tokens`); `logprobs` is the number of top alternatives when logprobs are asked for.
pub fn sampling(
    common: &CommonParams,
    max_tokens: Option<u64>,
    logprobs: Option<usize>,
    limits: &Limits,
) -> Result<Sampling, ServerError> {
    let n = common.n.unwrap_or(1);
    if n == 0 || n > limits.max_n as u64 {
        return Err(ServerError::invalid(
            Some("n".to_string()),
            format!("n must be between 1 and {}, got {n}.", limits.max_n),
        ));
    }
    let max_tokens = match max_tokens {
        None => None,
        Some(m) if m >= limits.max_model_len as u64 => {
            return Err(ServerError::invalid(
                Some("max_tokens".to_string()),
                format!(
                    "max_tokens is {m} but this model's maximum context length is {} tokens \
                     (prompt included); lower max_tokens.",
                    limits.max_model_len
                ),
            ))
        }
        Some(m) => Some(m as usize),
    };
    let top_k = match common.top_k {
        None | Some(0) | Some(-1) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(k) => {
            return Err(ServerError::invalid(
                Some("top_k".to_string()),
                format!("top_k must be -1 (off) or at least 1, got {k}."),
            ))
        }
    };
    let mut logit_bias = Vec::new();
    for (key, &bias) in common.logit_bias.iter().flatten() {
        let id = key.trim().parse::<u32>().map_err(|_| {
            ServerError::invalid(
                Some("logit_bias".to_string()),
                format!("logit_bias keys must be token ids, got {key:?}."),
            )
        })?;
        logit_bias.push((id, bias));
    }
    logit_bias.sort_by_key(|&(id, _)| id);
    let defaults = SamplingParams::default();
    let params = SamplingParams {
        temperature: common.temperature.unwrap_or(defaults.temperature),
        top_k,
        top_p: common.top_p.unwrap_or(defaults.top_p),
        min_p: common.min_p.unwrap_or(defaults.min_p),
        repetition_penalty: common
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty),
        presence_penalty: common.presence_penalty.unwrap_or(defaults.presence_penalty),
        frequency_penalty: common
            .frequency_penalty
            .unwrap_or(defaults.frequency_penalty),
        logit_bias,
        seed: common.seed.map(|s| s as u64),
        max_tokens: 1,
        stop_token_ids: common.stop_token_ids.clone().unwrap_or_default(),
        stop: common
            .stop
            .clone()
            .map(|s| s.into_vec())
            .unwrap_or_default(),
        ignore_eos: common.ignore_eos.unwrap_or(false),
        logprobs,
        prompt_logprobs: None,
    };
    params.validate(limits.vocab).map_err(sampling_error)?;
    Ok(Sampling {
        params,
        max_tokens,
        n: n as usize,
    })
}

impl Sampling {
    /// The `n` engine requests for one prompt; `what` names the prompt field in errors.
    pub fn requests(
        &self,
        prompt: &[u32],
        what: &str,
        limits: &Limits,
    ) -> Result<Vec<Request>, ServerError> {
        let len = prompt.len();
        if len == 0 {
            return Err(ServerError::invalid(
                Some(what.to_string()),
                format!("The {what} is empty after tokenization; send at least one token."),
            ));
        }
        let scoring_only = self.max_tokens == Some(0);
        if len > limits.max_model_len || (len == limits.max_model_len && !scoring_only) {
            return Err(ServerError::invalid(
                Some(what.to_string()),
                format!(
                    "This model's maximum context length is {} tokens, but the {what} has {len} \
                     tokens, which leaves no room to generate; shorten the {what}.",
                    limits.max_model_len
                ),
            ));
        }
        let room = limits.max_model_len - len;
        let max_tokens = match self.max_tokens {
            None => room,
            Some(m) if m <= room => m,
            Some(m) => {
                return Err(ServerError::invalid(
                    Some("max_tokens".to_string()),
                    format!(
                        "This model's maximum context length is {} tokens. However, you \
                         requested {} tokens ({len} in the {what}, {m} in the completion); \
                         lower max_tokens or shorten the {what}.",
                        limits.max_model_len,
                        len + m
                    ),
                ))
            }
        };
        Ok((0..self.n)
            .map(|i| Request {
                prompt: prompt.to_vec(),
                params: SamplingParams {
                    max_tokens,
                    seed: self.params.seed.map(|s| s.wrapping_add(i as u64)),
                    ..self.params.clone()
                },
            })
            .collect())
    }
}

fn sampling_error(e: SamplingError) -> ServerError {
    let param = match &e {
        SamplingError::InvalidParameter { name, .. } => *name,
        SamplingError::UnknownBiasToken { .. } => "logit_bias",
    };
    ServerError::invalid(Some(param.to_string()), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        vocab: 100,
        max_model_len: 64,
        max_n: 8,
    };

    fn param_of(e: ServerError) -> String {
        match e {
            ServerError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_the_rest_of_the_context() {
        let s = sampling(&CommonParams::default(), None, None, &LIMITS).unwrap();
        let r = s.requests(&[1, 2, 3, 4], "prompt", &LIMITS).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].params.max_tokens, 60);
        assert_eq!(r[0].params.temperature, 1.0);
    }

    #[test]
    fn n_seeded_copies_get_consecutive_seeds() {
        let common = CommonParams {
            n: Some(3),
            seed: Some(7),
            ..CommonParams::default()
        };
        let s = sampling(&common, Some(5), None, &LIMITS).unwrap();
        let seeds: Vec<_> = s
            .requests(&[1], "prompt", &LIMITS)
            .unwrap()
            .iter()
            .map(|r| r.params.seed)
            .collect();
        assert_eq!(seeds, [Some(7), Some(8), Some(9)]);
    }

    #[test]
    fn out_of_range_values_name_their_parameter() {
        let bad = |c: CommonParams| param_of(sampling(&c, None, None, &LIMITS).unwrap_err());
        let t = |t: f32| CommonParams {
            temperature: Some(t),
            ..CommonParams::default()
        };
        assert_eq!(bad(t(-1.0)), "temperature");
        assert_eq!(bad(t(f32::NAN)), "temperature");
        let n = |n| CommonParams {
            n: Some(n),
            ..CommonParams::default()
        };
        assert_eq!(bad(n(0)), "n");
        assert_eq!(bad(n(9)), "n");
        let bias = |k: &str| CommonParams {
            logit_bias: Some([(k.to_string(), 1.0)].into_iter().collect()),
            ..CommonParams::default()
        };
        assert_eq!(bad(bias("x")), "logit_bias");
        assert_eq!(bad(bias("100")), "logit_bias");
        let e = sampling(&CommonParams::default(), Some(64), None, &LIMITS).unwrap_err();
        assert_eq!(param_of(e), "max_tokens");
    }

    #[test]
    fn prompt_and_max_tokens_must_fit_the_context() {
        let s = sampling(&CommonParams::default(), Some(10), None, &LIMITS).unwrap();
        assert!(s.requests(&[1; 54], "prompt", &LIMITS).is_ok());
        let e = s.requests(&[1; 55], "prompt", &LIMITS).unwrap_err();
        assert_eq!(param_of(e), "max_tokens");
        let s = sampling(&CommonParams::default(), None, None, &LIMITS).unwrap();
        let e = s.requests(&[1; 64], "messages", &LIMITS).unwrap_err();
        assert_eq!(param_of(e), "messages");
        // No token asked for: the prompt alone may fill the context.
        let s = sampling(&CommonParams::default(), Some(0), None, &LIMITS).unwrap();
        assert_eq!(
            s.requests(&[1; 64], "prompt", &LIMITS).unwrap()[0]
                .params
                .max_tokens,
            0
        );
        let e = s.requests(&[1; 65], "prompt", &LIMITS).unwrap_err();
        assert_eq!(param_of(e), "prompt");
        let e = s.requests(&[], "prompt", &LIMITS).unwrap_err();
        assert_eq!(param_of(e), "prompt");
    }
}
