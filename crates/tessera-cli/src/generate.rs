//! `tessera generate`: one prompt in, one continuation out.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tessera_engine::{Coordinator, EngineOptions, GenerateRequest};
use tessera_model::{ChatMessage, ModelConfig, TextTokenizer, WeightDtype};

use crate::{check_device, rank_loader, weight_dtype, ModelArgs, ShardArgs};

/// Arguments of `tessera generate`.
#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weight precision: f32 or bf16 (and f16 on cuda; q8_0, q4_0, q4_1 on cpu).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Render the prompt as one user message with the chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Do not stop at the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Also report the K highest logits at the last prompt position (JSON: `prompt_top_logits`).
    #[arg(long, default_value_t = 0)]
    top_logits: usize,
    /// Total CPU threads for all ranks (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// CPU kernel instruction set: avx512bf16, avx512, avx2 or scalar (default: the fastest).
    #[arg(long)]
    isa: Option<String>,
    /// KV-cache storage: f32 or bf16 (default: f32 on cpu).
    #[arg(long, value_name = "f32|bf16")]
    kv_dtype: Option<String>,
}

#[derive(Serialize)]
struct TopLogit {
    id: u32,
    logit: f32,
}

#[derive(Serialize)]
struct Output {
    prompt_ids: Vec<u32>,
    completion_ids: Vec<u32>,
    text: String,
    tp: usize,
    finish_reason: tessera_engine::FinishReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_top_logits: Option<Vec<TopLogit>>,
}

pub(crate) fn run(args: &GenerateArgs) -> Result<()> {
    let device = check_device(&args.device)?;
    let dtype = weight_dtype(device, &args.dtype)?;
    let loader = rank_loader(device, &args.dtype, crate::parse_isa(args.isa.as_deref())?)?;
    if args.shard.tp == Some(0) {
        bail!("--tp must be at least 1");
    }
    let dir = args.model.resolve()?;
    let config = ModelConfig::from_dir(&dir)?;
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let text = if args.chat {
        let messages = [ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        }];
        tokenizer.render_chat(&messages, true)?
    } else {
        args.prompt.clone()
    };
    let prompt_ids = tokenizer.encode(&text)?;
    if prompt_ids.len() > config.max_position_embeddings {
        bail!(
            "the prompt has {} tokens but the model's context is {} tokens",
            prompt_ids.len(),
            config.max_position_embeddings
        );
    }
    let plan = args.shard.plan(&config.shape)?;
    let tp = plan.world_size;
    let mut stop_ids = tokenizer.eos_ids().to_vec();
    stop_ids.extend(&config.eos_token_ids);
    if args.ignore_eos {
        stop_ids.clear();
    }
    let started = std::time::Instant::now();
    let (completion, prompt_logits, finish) = generate_on(
        args,
        &dir,
        plan,
        dtype,
        loader.as_ref(),
        &prompt_ids,
        stop_ids,
    )?;
    let elapsed = started.elapsed();
    tracing::info!(
        prompt_tokens = prompt_ids.len(),
        completion_tokens = completion.len(),
        seconds = elapsed.as_secs_f64(),
        "generated"
    );
    let text = tokenizer.decode(&completion, true)?;
    if args.json {
        let top = (args.top_logits > 0).then(|| top_k(&prompt_logits, args.top_logits));
        let o = Output {
            prompt_ids,
            completion_ids: completion,
            text,
            tp,
            finish_reason: finish,
            prompt_top_logits: top,
        };
        println!("{}", serde_json::to_string(&o)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

/// The engine's generation on the loader's ranks: (completion, last prompt position's
/// logits, finish).
fn generate_on(
    args: &GenerateArgs,
    dir: &std::path::Path,
    plan: tessera_plan::ShardPlan,
    dtype: WeightDtype,
    loader: &dyn tessera_engine::RankLoader,
    prompt_ids: &[u32],
    stop_ids: Vec<u32>,
) -> Result<(Vec<u32>, Vec<f32>, tessera_engine::FinishReason)> {
    let options = EngineOptions {
        dtype,
        reduce: args.shard.reduce(),
        threads: args.threads,
        kv_dtype: crate::parse_kv_dtype(args.kv_dtype.as_deref())?,
        ..EngineOptions::default()
    };
    let mut engine =
        Coordinator::start_on(dir, plan, &options, loader).context("starting the engine")?;
    let out = engine.generate(&GenerateRequest {
        prompt: prompt_ids.to_vec(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        seed: args.seed,
        stop_ids,
    })?;
    Ok((out.completion, out.prompt_logits, out.finish))
}

fn top_k(logits: &[f32], k: usize) -> Vec<TopLogit> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k)
        .map(|i| TopLogit {
            id: i as u32,
            logit: logits[i],
        })
        .collect()
}
