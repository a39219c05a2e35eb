//! `tessera bench`: measurements that are benchmarks, not tests (medians over repeats).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::Serialize;
use tessera_engine::{Coordinator, EngineOptions};
use tessera_kernels::CpuPool;
use tessera_model::{LogitRows, ModelConfig, WeightDtype};

use tessera_plan::HardwareProfile;

use crate::manifest::{write_single_run, RunManifest};
use crate::{ModelArgs, ShardArgs};

/// Which benchmark to run.
#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Prefill tokens/s for one long prompt and batch-1 decode tokens/s.
    Latency(LatencyArgs),
    /// Read bandwidth of this machine (GB/s; best of a streaming read and the GEMV) for the decode bound, and the GEMM peak (GFLOP/s) for MFU.
    Bandwidth(BandwidthArgs),
    /// Offline serving throughput: N requests through the engine, TTFT and ITL percentiles.
    Throughput(crate::throughput::ThroughputArgs),
    /// Scaling report: every strategy at every rank count, measured and predicted.
    Scaling(crate::scaling::ScalingArgs),
    /// Paper projection from the cost model alone (no weights): a Markdown table.
    Project(crate::projection::ProjectionArgs),
}

/// Arguments of `tessera bench latency`.
#[derive(Args)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    shard: ShardArgs,
    /// Weight precision: f32, bf16, q8_0, q4_0 or q4_1.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time after a short prompt.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Repeats; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Total CPU threads for all ranks (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// CPU kernel instruction set: avx512bf16, avx512, avx2 or scalar (default: the fastest this CPU
    /// has). Forcing a slower one measures another machine class on this one.
    #[arg(long)]
    isa: Option<String>,
    /// KV-cache storage: f32 or bf16 (default: f32).
    #[arg(long, value_name = "f32|bf16")]
    kv_dtype: Option<String>,
    /// Also write `latency.json` and `manifest.json` into this directory.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Arguments of `tessera bench bandwidth`.
#[derive(Args)]
pub(crate) struct BandwidthArgs {
    /// Threads reading.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Buffer size in MiB (much larger than the caches).
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Repeats; the median is reported.
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// CPU kernel instruction set for the GEMV and GEMM probes (default: the fastest).
    #[arg(long)]
    isa: Option<String>,
    /// Also read buffers of these sizes (bytes, comma-separated) over and over, by the
    /// streaming sum and the GEMV of every weight format (f32, bf16, Q4_1): a model's
    /// weights read once per token may stay partly in a large L3, so the bound for a model
    /// is the best of every probe at its weight size.
    #[arg(long, value_delimiter = ',')]
    working_set_bytes: Vec<usize>,
}

#[derive(Serialize)]
struct LatencyReport {
    tp: usize,
    strategy: String,
    dtype: String,
    /// CPU kernels that ran (avx512bf16, avx512, avx2 or scalar).
    isa: String,
    weight_bytes_per_token: usize,
    prompt_tokens: usize,
    prefill_tok_s_median: f64,
    prefill_tok_s_all: Vec<f64>,
    decode_tokens: usize,
    decode_tok_s_median: f64,
    decode_tok_s_all: Vec<f64>,
}

pub(crate) fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Latency(a) => latency(a),
        BenchCommand::Bandwidth(a) => bandwidth(a),
        BenchCommand::Throughput(a) => crate::throughput::run(a),
        BenchCommand::Scaling(a) => crate::scaling::run(a),
        BenchCommand::Project(a) => crate::projection::run(a),
    }
}

/// Median of `v` (0 when empty).
/// `n` distinct pseudo-random prompts of `len` token ids for `seed`, avoiding the first 100
/// ids (special tokens): the benchmarks' inputs, which no prefix cache can share.
pub(crate) fn pseudo_prompts(n: usize, len: usize, seed: u64, vocab: usize) -> Vec<Vec<u32>> {
    let vocab = vocab as u64;
    (0..n as u64)
        .map(|s| {
            (0..len as u64)
                .map(|i| {
                    let x = (s + seed * 7919) * 1_000_003 + i * 2_654_435_761 + 12_345;
                    (x % (vocab - 100) + 100) as u32
                })
                .collect()
        })
        .collect()
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    s[s.len() / 2]
}

fn latency(a: &LatencyArgs) -> Result<()> {
    let Some(dtype) = WeightDtype::parse(&a.dtype) else {
        bail!(
            "unknown --dtype '{}' (f32, bf16, q8_0, q4_0 or q4_1)",
            a.dtype
        );
    };
    if a.repeats == 0 || a.prompt_tokens == 0 {
        bail!("--repeats and --prompt-tokens must be at least 1");
    }
    let dir = a.model.resolve()?;
    let config = ModelConfig::from_dir(&dir)?;
    let plan = a.shard.plan(&config.shape)?;
    let tp = plan.world_size;
    let strategy = plan.strategy.clone();
    let options = EngineOptions {
        dtype,
        reduce: a.shard.reduce(),
        threads: a.threads,
        kv_dtype: crate::parse_kv_dtype(a.kv_dtype.as_deref())?,
        ..EngineOptions::default()
    };
    let loader = tessera_engine::CpuLoader {
        isa: crate::parse_isa(a.isa.as_deref())?,
    };
    let mut engine = Coordinator::start_on(&dir, plan.clone(), &options, &loader)
        .context("starting the engine")?;
    let vocab = config.shape.vocab as u64;
    // A fixed pseudo-random prompt (no tokenizer involved): prefill cost does not depend on text.
    let prompt: Vec<u32> = (0..a.prompt_tokens as u64)
        .map(|i| ((i * 2654435761 + 12345) % vocab) as u32)
        .collect();
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for _ in 0..a.repeats {
        engine.reset()?;
        let t = Instant::now();
        engine.forward(&prompt, LogitRows::Last)?;
        prefill.push(a.prompt_tokens as f64 / t.elapsed().as_secs_f64());

        engine.reset()?;
        let mut logits = engine.forward(&prompt[..8.min(prompt.len())], LogitRows::Last)?;
        let t = Instant::now();
        for _ in 0..a.decode_tokens {
            let next = tessera_kernels::argmax(&logits).unwrap_or(0) as u32;
            logits = engine.forward(&[next], LogitRows::Last)?;
        }
        decode.push(a.decode_tokens as f64 / t.elapsed().as_secs_f64());
    }
    let s = &config.shape;
    // Every weight is read once per decode step (a tied embedding once, as the output head).
    let weight_bytes_per_token = dtype.storage_bytes(s.parameters());
    let report = LatencyReport {
        tp,
        strategy,
        dtype: a.dtype.clone(),
        isa: format!(
            "{:?}",
            loader.isa.unwrap_or_else(tessera_kernels::Isa::detect)
        )
        .to_lowercase(),
        weight_bytes_per_token,
        prompt_tokens: a.prompt_tokens,
        prefill_tok_s_median: median(&prefill),
        prefill_tok_s_all: prefill,
        decode_tokens: a.decode_tokens,
        decode_tok_s_median: median(&decode),
        decode_tok_s_all: decode,
    };
    println!("{}", serde_json::to_string(&report)?);
    if let Some(out) = &a.out {
        let mut manifest = RunManifest::new("latency", Some(&dir), 0, HardwareProfile::cpu_here())?;
        manifest.parameters = serde_json::json!({
            "dtype": a.dtype, "prompt_tokens": a.prompt_tokens, "decode_tokens": a.decode_tokens,
            "repeats": a.repeats, "threads": a.threads, "isa": a.isa, "kv_dtype": a.kv_dtype,
        });
        write_single_run(out, "latency.json", &report, manifest, &plan)?;
    }
    Ok(())
}

/// Shape of the GEMM peak probes (rows, inner, outputs).
const GEMM_M: usize = 256;
/// See [`GEMM_M`].
const GEMM_K: usize = 2048;
/// See [`GEMM_M`].
const GEMM_N: usize = 2048;

/// Read bandwidth as the best of two probes over a buffer much larger than the caches: a
/// streaming sum (four independent 16-lane accumulators per thread) and Tessera's own GEMV
/// over packed f32 panels (one row times a `k` = 2048 matrix of the same size), so the
/// bound is at least what the decode kernels reach. `bound_gb_s` is the largest sample of
/// either probe; `working_sets` adds rereads of model-sized buffers, whose `bound_gb_s` is
/// the bound for a model of that size (its weights may partly stay in L3 between tokens).
/// Also the GEMM peaks (f32, bf16, Q4_1 blocks) MFU figures divide by.
fn bandwidth(a: &BandwidthArgs) -> Result<()> {
    let pool = match crate::parse_isa(a.isa.as_deref())? {
        Some(isa) => CpuPool::with_isa(a.threads.max(1), isa)?,
        None => CpuPool::new(a.threads.max(1))?,
    };
    let len = (a.mib * 1024 * 1024 / 4).max(2048 * 2048);
    let buf: Vec<f32> = (0..len).map(|i| (i % 7) as f32).collect();
    let (mut stream, mut gemv, mut best, mut gemm, mut gemm_bf16) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let bf16_weights = packed_bf16(&buf)?;
    let panels = tessera_kernels::PackedMatrix::pack_f32(&buf, buf.len() / GEMV_K, GEMV_K)?;
    for _ in 0..a.repeats {
        let s = stream_read_rate(&pool, &buf);
        let g = gemv_read_rate(&pool, &panels)?;
        stream.push(s);
        gemv.push(g);
        best.push(s.max(g));
        gemm.push(gemm_rate(&pool, &buf)?);
        gemm_bf16.push(gemm_packed_rate(&pool, &bf16_weights)?);
    }
    let bound = best.iter().copied().fold(0.0, f64::max);
    let q4_1 = packed_q4_1(&buf)?;
    let gemm_q4_1: Vec<f64> = (0..a.repeats)
        .map(|_| gemm_packed_rate(&pool, &q4_1))
        .collect::<Result<_>>()?;
    let working_sets: Vec<serde_json::Value> = a
        .working_set_bytes
        .iter()
        .map(|&bytes| {
            let rows = (bytes / 4 / GEMV_K).clamp(16, buf.len() / GEMV_K);
            let ws = &buf[..rows * GEMV_K];
            // The decode kernels of every weight format, each over this many bytes.
            let kernels = [
                tessera_kernels::PackedMatrix::pack_f32(ws, rows, GEMV_K)?,
                packed_bf16_rows(
                    &buf[..(bytes / 2 / GEMV_K).clamp(16, buf.len() / GEMV_K) * GEMV_K],
                )?,
                packed_q4_1_rows(
                    &buf[..(bytes / 20 * 32 / GEMV_K).clamp(16, buf.len() / GEMV_K) * GEMV_K],
                )?,
            ];
            // One pass of each probe brings what fits into the caches; then timed passes.
            stream_read_rate(&pool, ws);
            for w in &kernels {
                gemv_read_rate(&pool, w)?;
            }
            let mut rates = Vec::new();
            for _ in 0..a.repeats {
                let mut best = stream_read_rate(&pool, ws);
                for w in &kernels {
                    best = best.max(gemv_read_rate(&pool, w)?);
                }
                rates.push(best);
            }
            let best = rates.iter().copied().fold(0.0, f64::max);
            Ok(serde_json::json!({
                "bytes": bytes, "gb_s_all": rates, "bound_gb_s": best.max(bound)
            }))
        })
        .collect::<Result<_>>()?;
    println!(
        "{}",
        serde_json::json!({
            "threads": pool.threads(), "mib": a.mib, "isa": format!("{:?}", pool.isa()),
            "read_gb_s_median": median(&best), "bound_gb_s": bound,
            "stream_gb_s_all": stream, "gemv_gb_s_all": gemv,
            "working_sets": working_sets,
            "gemm_gflop_s_max": gemm.iter().copied().fold(0.0, f64::max), "gemm_gflop_s_all": gemm,
            "gemm_bf16_gflop_s_max": gemm_bf16.iter().copied().fold(0.0, f64::max),
            "gemm_bf16_gflop_s_all": gemm_bf16,
            "gemm_q4_1_gflop_s_max": gemm_q4_1.iter().copied().fold(0.0, f64::max),
            "gemm_q4_1_gflop_s_all": gemm_q4_1,
        })
    );
    Ok(())
}

/// The first `GEMM_N x GEMM_K` values of `buf` quantized to Q4_1 blocks and packed.
fn packed_q4_1(buf: &[f32]) -> Result<tessera_kernels::PackedMatrix> {
    packed_q4_1_rows(&buf[..GEMM_N * GEMM_K])
}

/// `values` (a multiple of `GEMV_K`) as Q4_1 blocks packed in rows of `GEMV_K`.
fn packed_q4_1_rows(values: &[f32]) -> Result<tessera_kernels::PackedMatrix> {
    let rows = values.len() / GEMV_K;
    let t = tessera_kernels::BlockTensor::quantize(
        tessera_kernels::BlockFormat::Q4_1,
        values,
        rows,
        GEMV_K,
    )?;
    Ok(tessera_kernels::PackedMatrix::pack_blocks(&t))
}

/// `values` (a multiple of `GEMV_K`) as bf16 panels in rows of `GEMV_K`.
fn packed_bf16_rows(values: &[f32]) -> Result<tessera_kernels::PackedMatrix> {
    let w: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
    Ok(tessera_kernels::PackedMatrix::pack_bf16(
        &w,
        values.len() / GEMV_K,
        GEMV_K,
    )?)
}

/// GB/s of one streaming pass that sums `buf` (split over the pool's threads).
fn stream_read_rate(pool: &CpuPool, buf: &[f32]) -> f64 {
    let threads = pool.threads();
    let len = buf.len();
    let sink = std::sync::atomic::AtomicU32::new(0);
    let t = Instant::now();
    pool.run(|i| {
        let part = &buf[len * i / threads..len * (i + 1) / threads];
        let mut acc = [[0.0f32; 16]; 4];
        for c in part.chunks_exact(64) {
            for (j, lanes) in acc.iter_mut().enumerate() {
                for (a, x) in lanes.iter_mut().zip(&c[16 * j..16 * j + 16]) {
                    *a += *x;
                }
            }
        }
        let total: f32 = acc.iter().flatten().sum();
        sink.fetch_add(total as u32, std::sync::atomic::Ordering::Relaxed);
    });
    (len * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// GFLOP/s of Tessera's GEMM at m = 256, k = 2048, n = 2048 (weights from `buf`): the
/// compute peak MFU figures divide by, measured in the same run as they are.
fn gemm_rate(pool: &CpuPool, buf: &[f32]) -> Result<f64> {
    let (m, k, n) = (GEMM_M, GEMM_K, GEMM_N);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.25).collect();
    let mut y = vec![0.0f32; m * n];
    let w = tessera_kernels::WeightRef::F32(&buf[..n * k]);
    let t = Instant::now();
    tessera_kernels::matmul(pool, &x, m, k, w, n, None, &mut y)?;
    Ok((2 * m * k * n) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// The first `GEMM_N x GEMM_K` values of `buf` packed as bf16 weights.
fn packed_bf16(buf: &[f32]) -> Result<tessera_kernels::PackedMatrix> {
    packed_bf16_rows(&buf[..GEMM_N * GEMM_K])
}

// The GEMM probes' matrices are packed by the row helpers, in rows of `GEMV_K`.
const _: () = assert!(GEMM_K == GEMV_K);

/// GFLOP/s of one `GEMM_M x GEMM_K x GEMM_N` matmul over packed weights: bf16 (bf16
/// activations, `vdpbf16ps` where the CPU has it), the peak of `--dtype bf16`, or Q4_1
/// blocks (i16 activations, integer dots), the peak of `--dtype q4_1`.
fn gemm_packed_rate(pool: &CpuPool, w: &tessera_kernels::PackedMatrix) -> Result<f64> {
    let (m, k, n) = (GEMM_M, GEMM_K, GEMM_N);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.25).collect();
    let mut y = vec![0.0f32; m * n];
    let t = Instant::now();
    tessera_kernels::matmul_packed(pool, &x, m, w, None, &mut y)?;
    Ok((2 * m * k * n) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// Inner size of the GEMV probe's matrix.
const GEMV_K: usize = 2048;

/// GB/s of the weight read of one batch-1 matmul over packed panels of `GEMV_K` columns
/// (f32, bf16 or blocks, packed as the model's weights are: the decode kernel itself).
fn gemv_read_rate(pool: &CpuPool, w: &tessera_kernels::PackedMatrix) -> Result<f64> {
    let (n, k) = (w.rows(), w.cols());
    let x: Vec<f32> = (0..k).map(|i| (i % 5) as f32 * 0.25).collect();
    let mut y = vec![0.0f32; n];
    let t = Instant::now();
    tessera_kernels::matmul_packed(pool, &x, 1, w, None, &mut y)?;
    Ok(w.storage_bytes() as f64 / t.elapsed().as_secs_f64() / 1e9)
}
