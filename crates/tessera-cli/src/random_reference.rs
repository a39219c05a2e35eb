//! `tessera random-reference`: CPU outputs of a seeded random-weight model, as the small
//! JSON that `tessera gpu-check` compares the GPU against (a GPU machine gets no model
//! files, but writes the same random model from the same seed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tessera_model::{CpuBackend, LogitRows, PagedKvCache, RankModel, StepSeq, WeightDtype};
use tessera_plan::{ModelShape, ReduceMode, Strategy};

/// Rotary table length of random models (prompt and completion stay below it).
pub(crate) const MAX_POSITIONS: usize = 512;

/// Arguments of `tessera random-reference`.
#[derive(Args)]
pub(crate) struct RandomReferenceArgs {
    /// Model shape: smollm2-135m or llama3-8b.
    #[arg(long, default_value = "smollm2-135m")]
    shape: String,
    /// Weight seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Prompt tokens (drawn from the seed).
    #[arg(long, default_value_t = 12)]
    prompt_tokens: usize,
    /// Greedy tokens after the prompt.
    #[arg(long, default_value_t = 12)]
    max_tokens: usize,
    /// Logits kept at the last prompt position (the highest).
    #[arg(long, default_value_t = 64)]
    top_logits: usize,
    /// Where the random model is written (reused when its seed matches).
    #[arg(long, default_value = "/tmp/tessera-random-model")]
    dir: PathBuf,
}

/// The carried CPU outputs of one random model.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct RandomReference {
    /// Shape name.
    pub shape: String,
    /// Weight seed.
    pub seed: u64,
    /// Prompt ids.
    pub prompt: Vec<u32>,
    /// (id, logit) of the highest logits at the last prompt position, highest first.
    pub top_logits: Vec<(u32, f32)>,
    /// Greedy tokens after the prompt.
    pub greedy: Vec<u32>,
    /// Top-1 minus top-2 logit at each greedy step (a near-tie may flip on another device).
    pub margins: Vec<f32>,
}

/// A shape by name.
pub(crate) fn shape_named(name: &str) -> Result<ModelShape> {
    match name {
        "smollm2-135m" => Ok(ModelShape::smollm2_135m()),
        "llama3-8b" => Ok(ModelShape::llama3_8b()),
        other => bail!("unknown random-model shape '{other}' (smollm2-135m or llama3-8b)"),
    }
}

/// The prompt of a random model: `n` ids drawn from `seed`.
pub(crate) fn prompt_for(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

/// Writes the random model of `shape` and `seed` into `dir` unless it is there already.
pub(crate) fn ensure_model(dir: &Path, shape_name: &str, seed: u64) -> Result<()> {
    let stamp = dir.join("tessera-random.txt");
    let want = format!("{shape_name} seed {seed} positions {MAX_POSITIONS}");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    let shape = shape_named(shape_name)?;
    tessera_model::synthetic::write_random_model(dir, &shape, seed, MAX_POSITIONS)
        .with_context(|| format!("writing a random model to {}", dir.display()))?;
    std::fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// Indices of the `k` highest values, highest first (ties: lower index first).
pub(crate) fn top(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| (i as u32, logits[i]))
        .collect()
}

pub(crate) fn run(args: &RandomReferenceArgs) -> Result<()> {
    let shape = shape_named(&args.shape)?;
    if args.prompt_tokens == 0 || args.prompt_tokens + args.max_tokens > MAX_POSITIONS {
        bail!("prompt and completion must be 1..{MAX_POSITIONS} tokens");
    }
    ensure_model(&args.dir, &args.shape, args.seed)?;
    let plan = Strategy::Megatron.plan(&shape, 1)?;
    let model = RankModel::load_dir(&args.dir, &plan, 0, WeightDtype::F32, ReduceMode::default())?;
    let backend = CpuBackend::new(std::thread::available_parallelism().map_or(1, |n| n.get()))?;
    let mut comm = tessera_comm::SingleRank::new();
    let block_size = 16;
    let total = args.prompt_tokens + args.max_tokens;
    let mut cache = PagedKvCache::new(model.kv_widths(), total.div_ceil(block_size), block_size);
    let table: Vec<u32> = (0..total.div_ceil(block_size) as u32).collect();
    let prompt = prompt_for(args.seed, args.prompt_tokens, shape.vocab);
    let mut logits = model.forward_batch(
        &backend,
        &mut comm,
        &mut cache,
        &[StepSeq {
            id: 0,
            tokens: prompt.clone(),
            start: 0,
            block_table: table.clone(),
            logits: LogitRows::Last,
        }],
    )?;
    let top_logits = top(&logits, args.top_logits);
    let (mut greedy, mut margins) = (Vec::new(), Vec::new());
    while greedy.len() < args.max_tokens {
        let best = top(&logits, 2);
        let next = best[0].0;
        margins.push(best[0].1 - best.get(1).map_or(f32::NEG_INFINITY, |b| b.1));
        greedy.push(next);
        if greedy.len() == args.max_tokens {
            break;
        }
        let start = prompt.len() + greedy.len() - 1;
        logits = model.forward_batch(
            &backend,
            &mut comm,
            &mut cache,
            &[StepSeq {
                id: 0,
                tokens: vec![next],
                start,
                block_table: table.clone(),
                logits: LogitRows::Last,
            }],
        )?;
    }
    let out = RandomReference {
        shape: args.shape.clone(),
        seed: args.seed,
        prompt,
        top_logits,
        greedy,
        margins,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
