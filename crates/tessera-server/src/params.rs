//! From OpenAI request fields to the engine's [`SamplingParams`], with every check that
//! needs the model: context length, vocabulary, `n`.
//!
//! The rules: `max_tokens` defaults to the rest of the context after the prompt on chat
//! (like vLLM) and to 16 on text completions (like OpenAI and vLLM), capped by the room
//! left; sampling fields a request leaves out take the model's `generation_config.json`
//! values ([`SamplingDefaults`], as vLLM does), then Tessera's; a prompt that leaves no room, or `max_tokens` past the context, is refused;
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

/// Sampling defaults of the served model (`generation_config.json`), used for the fields
/// a request leaves out.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
pub struct SamplingDefaults {
    /// Default temperature.
    pub temperature: Option<f32>,
    /// Default nucleus mass.
    pub top_p: Option<f32>,
    /// Default top-k (0 is off).
    pub top_k: Option<i64>,
    /// Default min-p.
    pub min_p: Option<f32>,
    /// Default repetition penalty.
    pub repetition_penalty: Option<f32>,
}

impl SamplingDefaults {
    /// The defaults in `dir/generation_config.json`; none when the file is absent.
    pub fn from_model_dir(dir: &std::path::Path) -> Result<Self, ServerError> {
        let path = dir.join("generation_config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(ServerError::Engine(format!("{}: {e}", path.display()))),
        };
        serde_json::from_str(&text)
            .map_err(|e| ServerError::Engine(format!("{}: {e}", path.display())))
    }
}

/// The sampling part of a request, checked, before any prompt is known.
#[derive(Clone, Debug)]
pub struct CheckedSampling {
    /// Parameters shared by every choice (`max_tokens` is set per prompt).
    pub params: SamplingParams,
    /// The requested `max_tokens`, if any.
    pub max_tokens: Option<usize>,
    /// `max_tokens` when the request leaves it out (capped by the room left; `None`: all
    /// the room left).
    pub default_max_tokens: Option<usize>,
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
    model: &SamplingDefaults,
) -> Result<CheckedSampling, ServerError> {
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
    let top_k = match common.top_k.or(model.top_k) {
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
        temperature: common
            .temperature
            .or(model.temperature)
            .unwrap_or(defaults.temperature),
        top_k,
        top_p: common.top_p.or(model.top_p).unwrap_or(defaults.top_p),
        min_p: common.min_p.or(model.min_p).unwrap_or(defaults.min_p),
        repetition_penalty: common
            .repetition_penalty
            .or(model.repetition_penalty)
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
    Ok(CheckedSampling {
        params,
        max_tokens,
        default_max_tokens: None,
        n: n as usize,
    })
}

impl CheckedSampling {
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
            None => self.default_max_tokens.map_or(room, |d| d.min(room)),
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
        let s = sampling(
            &CommonParams::default(),
            None,
            None,
            &LIMITS,
            &SamplingDefaults::default(),
        )
        .unwrap();
        let r = s.requests(&[1, 2, 3, 4], "prompt", &LIMITS).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].params.max_tokens, 60);
        assert_eq!(r[0].params.temperature, 1.0);
    }

    #[test]
    fn model_defaults_fill_unset_fields_and_requests_win() {
        let model = SamplingDefaults {
            temperature: Some(0.2),
            top_p: Some(0.9),
            top_k: Some(50),
            min_p: None,
            repetition_penalty: Some(1.1),
        };
        let s = sampling(&CommonParams::default(), None, None, &LIMITS, &model).unwrap();
        assert_eq!(s.params.temperature, 0.2);
        assert_eq!(s.params.top_p, 0.9);
        assert_eq!(s.params.top_k, Some(50));
        assert_eq!(s.params.repetition_penalty, 1.1);
        let common = CommonParams {
            temperature: Some(1.0),
            top_k: Some(-1),
            ..CommonParams::default()
        };
        let s = sampling(&common, None, None, &LIMITS, &model).unwrap();
        assert_eq!(s.params.temperature, 1.0);
        assert_eq!(s.params.top_k, None);
    }

    #[test]
    fn a_default_max_tokens_is_capped_by_the_room_left() {
        let mut s = sampling(
            &CommonParams::default(),
            None,
            None,
            &LIMITS,
            &SamplingDefaults::default(),
        )
        .unwrap();
        s.default_max_tokens = Some(16);
        assert_eq!(
            s.requests(&[1; 4], "prompt", &LIMITS).unwrap()[0]
                .params
                .max_tokens,
            16
        );
        assert_eq!(
            s.requests(&[1; 54], "prompt", &LIMITS).unwrap()[0]
                .params
                .max_tokens,
            10
        );
    }

    #[test]
    fn n_seeded_copies_get_consecutive_seeds() {
        let common = CommonParams {
            n: Some(3),
            seed: Some(7),
            ..CommonParams::default()
        };
        let s = sampling(
            &common,
            Some(5),
            None,
            &LIMITS,
            &SamplingDefaults::default(),
        )
        .unwrap();
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
        let bad = |c: CommonParams| {
            param_of(sampling(&c, None, None, &LIMITS, &SamplingDefaults::default()).unwrap_err())
        };
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
        let e = sampling(
            &CommonParams::default(),
            Some(64),
            None,
            &LIMITS,
            &SamplingDefaults::default(),
        )
        .unwrap_err();
        assert_eq!(param_of(e), "max_tokens");
    }

    #[test]
    fn prompt_and_max_tokens_must_fit_the_context() {
        let s = sampling(
            &CommonParams::default(),
            Some(10),
            None,
            &LIMITS,
            &SamplingDefaults::default(),
        )
        .unwrap();
        assert!(s.requests(&[1; 54], "prompt", &LIMITS).is_ok());
        let e = s.requests(&[1; 55], "prompt", &LIMITS).unwrap_err();
        assert_eq!(param_of(e), "max_tokens");
        let s = sampling(
            &CommonParams::default(),
            None,
            None,
            &LIMITS,
            &SamplingDefaults::default(),
        )
        .unwrap();
        let e = s.requests(&[1; 64], "messages", &LIMITS).unwrap_err();
        assert_eq!(param_of(e), "messages");
        // No token asked for: the prompt alone may fill the context.
        let s = sampling(
            &CommonParams::default(),
            Some(0),
            None,
            &LIMITS,
            &SamplingDefaults::default(),
        )
        .unwrap();
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
