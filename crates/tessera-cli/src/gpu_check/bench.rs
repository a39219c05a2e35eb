//! The timing stages of `gpu-check`: device copy bandwidth, and prefill/decode tokens/s
//! of a random model of a named shape next to the HBM bound.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};
use tessera_cuda::collective::SingleGpu;
use tessera_cuda::{CudaKvCache, CudaRankModel, Gpu, GpuOptions};
use tessera_model::{LogitRows, ModelConfig, StepSeq, WeightFiles};
use tessera_plan::{ReduceMode, Strategy};

use super::{GpuCheckArgs, Results, BLOCK_SIZE};
use crate::cuda::device_dtype;
use crate::random_reference::{prompt_for, shape_named, MAX_POSITIONS};

/// Device-to-device copy bandwidth, bytes read plus written per second (median of 10).
pub(super) fn measure_bandwidth(gpu: &Gpu) -> Result<f64> {
    let n = 1usize << 29; // 2 GiB of f32
    let src = tessera_cuda::ops::random_f32(gpu, n, 3, 1.0, 0.0)?;
    let mut dst = gpu.zeros::<f32>(n)?;
    gpu.synchronize()?;
    let mut times = Vec::new();
    for _ in 0..12 {
        let t = Instant::now();
        gpu.stream().memcpy_dtod(&src, &mut dst)?;
        gpu.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.drain(..2);
    times.sort_by(f64::total_cmp);
    Ok((2 * n * 4) as f64 / times[times.len() / 2])
}

/// A config for a random model of a named shape (same fields as the written ones).
fn config_for(shape_name: &str) -> Result<ModelConfig> {
    let s = shape_named(shape_name)?;
    let text = json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": s.hidden, "intermediate_size": s.intermediate,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads, "num_hidden_layers": s.layers,
        "head_dim": s.head_dim, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": MAX_POSITIONS,
        "vocab_size": s.vocab, "tie_word_embeddings": s.tied_embeddings, "hidden_act": "silu", "eos_token_id": 0,
    })
    .to_string();
    Ok(ModelConfig::parse(&text, Path::new(shape_name))?)
}

/// Prefill and decode tokens/s of a seeded random model at each batch size, next to the
/// HBM bound (every weight read once per decode step at the measured copy bandwidth);
/// stage `bench` is rewritten after each batch size.
pub(super) fn bench(
    a: &GpuCheckArgs,
    options: &GpuOptions,
    bandwidth: Option<f64>,
    res: &mut Results,
) -> Result<()> {
    let config = config_for(&a.bench_shape)?;
    let plan = Strategy::Megatron.plan(&config.shape, 1)?;
    let started = Instant::now();
    let mut model = CudaRankModel::load(
        Gpu::new(0, options)?,
        &config,
        &WeightFiles::random(11),
        &plan,
        0,
        device_dtype(&a.bench_dtype)?,
        ReduceMode::Fast,
    )?;
    let load_s = started.elapsed().as_secs_f64();
    // Room for the prompt and two decode passes (graphs on, then off).
    let per_seq = (a.prompt_len + 2 * (a.decode_steps + 1) + 1).div_ceil(BLOCK_SIZE);
    let max_batch = a.batches.iter().copied().max().unwrap_or(1);
    let mut cache = model.new_cache(per_seq * max_batch, BLOCK_SIZE)?;
    let kv = format!("{:?}", model.preferred_kv()).to_lowercase();
    let weight_bytes = model.weight_bytes();
    res.table.push(format!(
        "bench        {} {} weights {:.2} GB, {kv} KV pool (load {load_s:.1} s)",
        a.bench_shape,
        a.bench_dtype,
        weight_bytes as f64 / 1e9,
    ));
    res.table.push(
        "  batch  prefill tok/s  decode tok/s  (no graphs)  HBM bound tok/s  fraction".to_string(),
    );
    let mut rows = Vec::new();
    for &b in &a.batches {
        let bound = bandwidth.map(|bw| b as f64 * bw / weight_bytes as f64);
        let vocab = config.shape.vocab;
        let (row, line) = bench_batch(a, &mut model, &mut cache, per_seq, (b, vocab), bound)?;
        res.table.push(line);
        rows.push(row);
        res.stage("bench", json!({"shape": a.bench_shape, "dtype": a.bench_dtype, "kv": kv, "weight_bytes": weight_bytes, "load_s": load_s, "prompt_len": a.prompt_len, "decode_steps": a.decode_steps, "rows": rows}))?;
    }
    Ok(())
}

/// One batch size of [`bench`]: its JSON row and table line.
fn bench_batch(
    a: &GpuCheckArgs,
    model: &mut CudaRankModel,
    cache: &mut CudaKvCache,
    per_seq: usize,
    (b, vocab): (usize, usize),
    bound: Option<f64>,
) -> Result<(Value, String)> {
    let tables: Vec<Vec<u32>> = (0..b)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let seqs: Vec<StepSeq> = tables
        .iter()
        .enumerate()
        .map(|(s, table)| StepSeq {
            id: s as u64,
            tokens: prompt_for(s as u64, a.prompt_len, vocab),
            start: 0,
            block_table: table.clone(),
            logits: LogitRows::Last,
        })
        .collect();
    model.gpu().synchronize()?;
    let t = Instant::now();
    let n = model.forward(&mut SingleGpu, cache, &seqs)?;
    let next = model.greedy(n)?;
    let prefill_s = t.elapsed().as_secs_f64();
    // Graphs on (the default), then, for small batches where launches matter, off.
    model.set_graphs(true);
    let (decode_s, next) = decode_pass(model, cache, &tables, next, a.prompt_len, a.decode_steps)?;
    let eager_s = if b <= 8 {
        model.set_graphs(false);
        let start = a.prompt_len + a.decode_steps + 1;
        let (secs, _) = decode_pass(model, cache, &tables, next, start, a.decode_steps)?;
        model.set_graphs(true);
        Some(secs)
    } else {
        None
    };
    let prefill_tps = (b * a.prompt_len) as f64 / prefill_s;
    let decode_tps = (b * a.decode_steps) as f64 / decode_s;
    let eager_tps = eager_s.map(|e| (b * a.decode_steps) as f64 / e);
    let fraction = bound.map(|x| decode_tps / x);
    let line = format!(
        "  {b:>5}  {prefill_tps:>13.0}  {decode_tps:>12.1}  {:>11}  {:>15}  {:>8}",
        eager_tps.map_or("-".into(), |x| format!("{x:.1}")),
        bound.map_or("-".into(), |x| format!("{x:.1}")),
        fraction.map_or("-".into(), |f| format!("{f:.2}"))
    );
    let row = json!({"batch": b, "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps, "decode_tokens_per_s_no_graphs": eager_tps, "graphs": model.graph_stats().0, "hbm_bound_tokens_per_s": bound, "fraction_of_bound": fraction, "prefill_s": prefill_s, "decode_s": decode_s});
    Ok((row, line))
}

/// `steps` timed decode steps (after one untimed warm-up step, which also captures the
/// graph) of every sequence from position `start`; returns the seconds and the last
/// tokens.
fn decode_pass(
    model: &mut CudaRankModel,
    cache: &mut CudaKvCache,
    tables: &[Vec<u32>],
    mut next: Vec<i32>,
    start: usize,
    steps: usize,
) -> Result<(f64, Vec<i32>)> {
    let mut secs = 0.0;
    for step in 0..=steps {
        let seqs: Vec<StepSeq> = next
            .iter()
            .zip(tables)
            .map(|(&t, table)| StepSeq {
                id: 0,
                tokens: vec![t.max(0) as u32],
                start: start + step,
                block_table: table.clone(),
                logits: LogitRows::Last,
            })
            .collect();
        model.gpu().synchronize()?;
        let t = Instant::now();
        let rows = model.forward(&mut SingleGpu, cache, &seqs)?;
        next = model.greedy(rows)?;
        if step > 0 {
            secs += t.elapsed().as_secs_f64();
        }
    }
    Ok((secs, next))
}
