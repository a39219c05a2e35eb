//! Generation of one sequence: prefill the prompt, then decode token by token.

use tessera_model::LogitRows;

use crate::coordinator::{Coordinator, EngineError};
use crate::engine::FinishReason;
use crate::sampling::{Sampler, SamplingParams};

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// 0 for greedy decoding; otherwise softmax temperature.
    pub temperature: f32,
    /// Seed of the sampler (unused when greedy).
    pub seed: u64,
    /// Token ids that end generation (not emitted).
    pub stop_ids: Vec<u32>,
}

/// The result of [`Coordinator::generate`].
#[derive(Clone, Debug)]
pub struct GenerateOutput {
    /// Generated token ids.
    pub completion: Vec<u32>,
    /// Full-vocabulary logits at the last prompt position.
    pub prompt_logits: Vec<f32>,
    /// Why generation ended.
    pub finish: FinishReason,
}

impl Coordinator {
    /// Generates a continuation of `req.prompt` from an empty cache.
    pub fn generate(&mut self, req: &GenerateRequest) -> Result<GenerateOutput, EngineError> {
        if req.prompt.is_empty() {
            return Err(EngineError::BadRequest("the prompt is empty".into()));
        }
        if !(req.temperature >= 0.0 && req.temperature.is_finite()) {
            return Err(EngineError::BadRequest(format!(
                "temperature must be a finite number >= 0, got {}",
                req.temperature
            )));
        }
        let context = self.config().max_position_embeddings;
        if req.prompt.len() > context {
            return Err(EngineError::BadRequest(format!(
                "the prompt has {} tokens but the model's context is {context}",
                req.prompt.len()
            )));
        }
        self.reset()?;
        let params = SamplingParams {
            temperature: req.temperature,
            seed: Some(req.seed),
            max_tokens: req.max_tokens.max(1),
            ..SamplingParams::default()
        };
        let mut sampler = Sampler::new(&params, &req.prompt);
        let prompt_logits = self.forward(&req.prompt, LogitRows::Last)?;
        let mut logits = prompt_logits.clone();
        let mut completion = Vec::new();
        let budget = req.max_tokens.min(context - req.prompt.len());
        while completion.len() < budget {
            let next = sampler.sample(&logits).token;
            if req.stop_ids.contains(&next) {
                return Ok(GenerateOutput {
                    completion,
                    prompt_logits,
                    finish: FinishReason::Stop,
                });
            }
            completion.push(next);
            if completion.len() == budget {
                break;
            }
            logits = self.forward(&[next], LogitRows::Last)?;
        }
        Ok(GenerateOutput {
            completion,
            prompt_logits,
            finish: FinishReason::Length,
        })
    }
}
