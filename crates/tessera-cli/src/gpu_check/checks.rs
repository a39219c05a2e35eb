//! The correctness stages of `gpu-check`: the random model through the engine's CUDA
//! ranks against the carried CPU outputs, CUDA graphs against eager steps, and NCCL with
//! one rank.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tessera_cuda::collective::{DeviceComm, SingleGpu};
use tessera_cuda::nccl::NcclCommunicator;
use tessera_cuda::{CudaKvCache, CudaRankModel, DeviceDtype, Gpu, GpuOptions, KvDtype};
use tessera_model::{LogitRows, ModelConfig, StepSeq, WeightFiles};
use tessera_plan::{ReduceMode, ShardPlan, Strategy};

use super::{GpuCheckArgs, BLOCK_SIZE};
use crate::random_reference::{ensure_model, prompt_for, RandomReference};

/// The carried reference, with its random model written to `a.model_dir` and planned for
/// one rank.
struct RandomModel {
    reference: RandomReference,
    config: ModelConfig,
    plan: ShardPlan,
}

fn random_model_files(a: &GpuCheckArgs) -> Result<RandomModel> {
    let text = std::fs::read_to_string(&a.reference)
        .with_context(|| format!("reading {}", a.reference.display()))?;
    let reference: RandomReference =
        serde_json::from_str(&text).context("parsing the reference")?;
    ensure_model(&a.model_dir, &reference.shape, reference.seed)?;
    let config = ModelConfig::from_dir(&a.model_dir)?;
    let plan = Strategy::Megatron.plan(&config.shape, 1)?;
    Ok(RandomModel {
        reference,
        config,
        plan,
    })
}

/// The random model of the reference, f32 weights, KV pool of `kv`, through the engine's
/// path (coordinator + `CudaLoader`, as `generate`/`serve --device cuda` run it), greedy,
/// against the carried CPU logits and tokens. The bf16 pool (the grouped decode kernel for
/// every row) rounds keys and values: its bound is looser, and its tokens are reported,
/// not required to match.
pub(super) fn random_model(
    a: &GpuCheckArgs,
    options: &GpuOptions,
    kv: KvDtype,
) -> Result<(Value, String)> {
    let started = std::time::Instant::now();
    let RandomModel {
        reference, plan, ..
    } = random_model_files(a)?;
    let written_s = started.elapsed().as_secs_f64();
    let loader = tessera_cuda::CudaLoader {
        options: options.clone(),
        dtype: DeviceDtype::F32,
        first_device: 0,
        kv: Some(kv),
    };
    let engine_options = tessera_engine::EngineOptions {
        kv_cache_bytes: 64 << 20,
        // The CUDA ranks sum with NCCL's own order (they refuse the deterministic mode).
        reduce: ReduceMode::Fast,
        ..tessera_engine::EngineOptions::default()
    };
    let mut coord =
        tessera_engine::Coordinator::start_on(&a.model_dir, plan, &engine_options, &loader)?;
    let out = coord.generate(&tessera_engine::GenerateRequest {
        prompt: reference.prompt.clone(),
        max_tokens: reference.greedy.len(),
        temperature: 0.0,
        seed: 0,
        stop_ids: Vec::new(),
    })?;
    let logits_rel = top_logits_rel_err(&out.prompt_logits, &reference);
    let (tokens_ok, compared) = tokens_match(&out.completion, &reference);
    let passed = match kv {
        KvDtype::F32 => logits_rel <= 1e-3 && tokens_ok,
        KvDtype::Bf16 => logits_rel <= 2e-2,
    };
    let line = format!(
        "model {:<6} {} (engine: top-{} logits rel {:.1e}, tokens {}/{} compared {})",
        if kv == KvDtype::F32 { "f32" } else { "bf16kv" },
        if passed { "passed" } else { "FAILED" },
        reference.top_logits.len(),
        logits_rel,
        compared,
        reference.greedy.len(),
        if tokens_ok { "match" } else { "DIFFER" }
    );
    let v = json!({
        "shape": reference.shape, "seed": reference.seed, "kv": format!("{kv:?}"), "passed": passed, "logits_rel_err": logits_rel,
        "gpu_tokens": out.completion, "cpu_tokens": reference.greedy, "tokens_ok": tokens_ok,
        "model_write_s": written_s, "total_s": started.elapsed().as_secs_f64(),
    });
    Ok((v, line))
}

/// Largest distance of the reference's top logits, relative to their largest magnitude
/// (infinite when a logit is missing or not finite).
fn top_logits_rel_err(logits: &[f32], reference: &RandomReference) -> f32 {
    let scale = reference
        .top_logits
        .iter()
        .map(|(_, v)| v.abs())
        .fold(0.0f32, f32::max)
        .max(1e-6);
    let mut max_diff = 0.0f32;
    for &(id, v) in &reference.top_logits {
        let g = logits.get(id as usize).copied().unwrap_or(f32::NAN);
        if !g.is_finite() {
            return f32::INFINITY;
        }
        max_diff = max_diff.max((g - v).abs());
    }
    max_diff / scale
}

/// Whether greedy tokens match the reference's until a step whose CPU margin is a
/// near-tie (there the paths may part legitimately, and what follows is not compared);
/// also the steps compared.
fn tokens_match(got: &[u32], reference: &RandomReference) -> (bool, usize) {
    let mut compared = 0;
    for (i, (&g, &c)) in got.iter().zip(&reference.greedy).enumerate() {
        compared = i + 1;
        if g != c {
            return (
                reference.margins.get(i).is_some_and(|&m| m < 1e-3),
                compared,
            );
        }
    }
    (got.len() == reference.greedy.len(), compared)
}

/// Logits and greedy tokens of `steps` decode steps of `batch` sequences.
type Run = (Vec<f32>, Vec<u32>, (usize, u64));

/// Decode steps replayed from CUDA graphs give the bits of eager steps (which pad the
/// same way): a batch of one and a batch of three (padded to four).
pub(super) fn graphs(a: &GpuCheckArgs, options: &GpuOptions) -> Result<(Value, String)> {
    let RandomModel {
        reference,
        config,
        plan,
    } = random_model_files(a)?;
    let files = WeightFiles::open(&a.model_dir)?;
    let mut model = CudaRankModel::load(
        Gpu::new(0, options)?,
        &config,
        &files,
        &plan,
        0,
        DeviceDtype::F32,
        ReduceMode::Fast,
    )?;
    let steps = 8;
    let mut cases = Vec::new();
    let mut all_ok = true;
    for batch in [1usize, 3] {
        let vocab = config.shape.vocab;
        let eager = decode_run(&mut model, &reference, vocab, batch, steps, false)?;
        let graph = decode_run(&mut model, &reference, vocab, batch, steps, true)?;
        let max_diff = eager
            .0
            .iter()
            .zip(&graph.0)
            .map(|(x, y)| {
                if x.is_finite() && y.is_finite() {
                    (x - y).abs()
                } else {
                    f32::INFINITY
                }
            })
            .fold(0.0f32, f32::max);
        let (captured, replays) = graph.2;
        // The graph runs the eager step's very kernels on the same padded shapes.
        let bound = 0.0;
        let ok = eager.0.len() == graph.0.len()
            && max_diff <= bound
            && eager.1 == graph.1
            && replays >= (steps - 1) as u64;
        all_ok &= ok;
        cases.push(json!({"batch": batch, "passed": ok, "max_abs_diff": max_diff, "bound": bound, "graphs_captured": captured, "replays": replays, "tokens_equal": eager.1 == graph.1}));
    }
    let line = format!(
        "cuda graphs  {} (decode logits graph vs eager bit for bit, batch 1 and 3)",
        if all_ok { "passed" } else { "FAILED" }
    );
    Ok((json!({"passed": all_ok, "cases": cases}), line))
}

/// `batch` sequences of the reference's prompt length, prefilled, then `steps` greedy
/// decode steps with graphs on or off, in a fresh cache.
fn decode_run(
    model: &mut CudaRankModel,
    reference: &RandomReference,
    vocab: usize,
    batch: usize,
    steps: usize,
    graphs: bool,
) -> Result<Run> {
    model.set_graphs(graphs);
    let prompt_len = reference.prompt.len();
    let per_seq = (prompt_len + steps + 1).div_ceil(BLOCK_SIZE);
    let mut cache: CudaKvCache = model.new_cache(per_seq * batch, BLOCK_SIZE)?;
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let seqs: Vec<StepSeq> = tables
        .iter()
        .enumerate()
        .map(|(s, table)| StepSeq {
            id: s as u64,
            tokens: prompt_for(s as u64 + 1, prompt_len, vocab),
            start: 0,
            block_table: table.clone(),
            logits: LogitRows::Last,
        })
        .collect();
    let rows = model.forward(&mut SingleGpu, &mut cache, &seqs)?;
    let mut next = model.greedy(rows)?;
    let mut all_logits = Vec::new();
    let mut tokens = Vec::new();
    for step in 0..steps {
        let seqs: Vec<StepSeq> = tables
            .iter()
            .zip(&next)
            .enumerate()
            .map(|(s, (table, &t))| StepSeq {
                id: s as u64,
                tokens: vec![t.max(0) as u32],
                start: prompt_len + step,
                block_table: table.clone(),
                logits: LogitRows::Last,
            })
            .collect();
        tokens.extend(seqs.iter().map(|s| s.tokens[0]));
        let rows = model.forward(&mut SingleGpu, &mut cache, &seqs)?;
        all_logits.extend(model.logits(rows)?);
        next = model.greedy(rows)?;
    }
    Ok((all_logits, tokens, model.graph_stats()))
}

/// NCCL with one rank: all-reduce and all-gather leave the data as it was.
pub(super) fn nccl(gpu: &Gpu, options: &GpuOptions) -> Result<(Value, String)> {
    let mut comms = NcclCommunicator::init_all(&[gpu], &options.lib_dirs)?;
    let mut comm = comms.pop().context("one communicator")?;
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
    let mut host = data.clone();
    tessera_comm::Communicator::all_reduce_sum(&mut comm, &mut host)?;
    let mut gathered = vec![f32::NAN; data.len()];
    tessera_comm::Communicator::all_gather(&mut comm, &data, &mut gathered)?;
    let mut dev = gpu.upload(&data)?;
    DeviceComm::all_reduce_sum(&mut comm, gpu, &mut dev, data.len())?;
    let dev_back = gpu.download(&dev)?;
    let passed = host == data && gathered == data && dev_back == data;
    let line = format!("nccl 1 rank  {}", if passed { "passed" } else { "FAILED" });
    Ok((
        json!({"passed": passed, "all_reduce": host == data, "all_gather": gathered == data, "device_all_reduce": dev_back == data}),
        line,
    ))
}
