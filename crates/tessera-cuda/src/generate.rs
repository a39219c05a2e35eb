//! Generation of one sequence on one GPU: prefill the prompt in one forward pass, then
//! decode token by token, sampling on the device so only token ids reach the host.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_model::{LogitRows, RowChoice, StepSeq};

use crate::cache::CudaKvCache;
use crate::collective::DeviceComm;
use crate::error::{ensure, CudaError};
use crate::model::CudaRankModel;

/// How tokens are chosen.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the k largest logits (0 = all).
    pub top_k: usize,
    /// Nucleus mass (1 = all).
    pub top_p: f32,
    /// Seed of the uniforms drawn for sampling.
    pub seed: u64,
}

/// What [`generate`] produced.
#[derive(Clone, Debug)]
pub struct Generation {
    /// New token ids.
    pub completion: Vec<u32>,
    /// Logits at the last prompt position (full vocabulary).
    pub prompt_logits: Vec<f32>,
    /// True when a stop id ended it (else `max_tokens` did).
    pub stopped: bool,
}

/// Picks one token per row of the model's last `rows` logit rows, on the device.
pub fn pick(
    model: &mut CudaRankModel,
    rows: usize,
    sampling: &Sampling,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<u32>, CudaError> {
    let choices: Vec<RowChoice> = (0..rows)
        .map(|_| {
            if sampling.temperature <= 0.0 {
                RowChoice::GREEDY
            } else {
                RowChoice {
                    temperature: sampling.temperature,
                    top_k: sampling.top_k,
                    top_p: sampling.top_p,
                    // Drawn as the engine's sampler draws it, so a seed picks alike.
                    uniform: rng.random::<f32>(),
                }
            }
        })
        .collect();
    model
        .choose(rows, &choices)?
        .into_iter()
        .map(|i| {
            u32::try_from(i).map_err(|_| CudaError::Shape {
                op: "sample",
                reason: "a row of logits held no number".into(),
            })
        })
        .collect()
}

/// Generates up to `max_tokens` tokens after `prompt` in blocks `0..` of `cache`.
pub fn generate(
    model: &mut CudaRankModel,
    comm: &mut (dyn DeviceComm + 'static),
    cache: &mut CudaKvCache,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    stop_ids: &[u32],
) -> Result<Generation, CudaError> {
    ensure(!prompt.is_empty(), "generate", || {
        "the prompt is empty".into()
    })?;
    let total = prompt.len() + max_tokens;
    let blocks = total.div_ceil(cache.block_size());
    ensure(blocks <= cache.num_blocks(), "generate", || {
        format!(
            "{total} tokens need {blocks} cache blocks; the pool has {}",
            cache.num_blocks()
        )
    })?;
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    let rows = model.forward(
        comm,
        cache,
        &[StepSeq {
            id: 0,
            tokens: prompt.to_vec(),
            start: 0,
            block_table: table.to_vec(),
            logits: LogitRows::Last,
        }],
    )?;
    let prompt_logits = model.logits(rows)?;
    let mut completion = Vec::with_capacity(max_tokens);
    let mut next = first(pick(model, rows, sampling, &mut rng)?)?;
    let mut stopped = false;
    while completion.len() < max_tokens {
        completion.push(next);
        if stop_ids.contains(&next) {
            stopped = true;
            break;
        }
        if completion.len() == max_tokens {
            break;
        }
        let start = prompt.len() + completion.len() - 1;
        let rows = model.forward(
            comm,
            cache,
            &[StepSeq {
                id: 0,
                tokens: [next].to_vec(),
                start,
                block_table: table.to_vec(),
                logits: LogitRows::Last,
            }],
        )?;
        next = first(pick(model, rows, sampling, &mut rng)?)?;
    }
    Ok(Generation {
        completion,
        prompt_logits,
        stopped,
    })
}

/// The one token of a one-row pick.
fn first(ids: Vec<u32>) -> Result<u32, CudaError> {
    ids.first().copied().ok_or_else(|| CudaError::Shape {
        op: "generate",
        reason: "the step returned no row of logits".into(),
    })
}
