//! The CLI's CUDA paths (built with `--features cuda`): the engine's CUDA rank loader
//! (`--device cuda` of generate, serve, batch and bench throughput) and the hidden
//! `gpu-check` that `tools/gpu/check.sh` runs on a lent GPU machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};
use tessera_cuda::collective::{DeviceComm, SingleGpu};
use tessera_cuda::generate::{generate as cuda_generate, Sampling};
use tessera_cuda::nccl::NcclCommunicator;
use tessera_cuda::nvrtc::python_cuda_lib_dirs;
use tessera_cuda::{CudaKvCache, CudaRankModel, DeviceDtype, Gpu, GpuOptions, KvDtype};
use tessera_model::{LogitRows, ModelConfig, StepSeq, WeightFiles};
use tessera_plan::{ReduceMode, ShardPlan, Strategy};

use crate::random_reference::{ensure_model, shape_named, RandomReference, MAX_POSITIONS};

/// Tokens per KV block on the GPU.
const BLOCK_SIZE: usize = 16;

/// Library folders from Python's site-packages, and a PTX cache under `~/.cache`.
#[allow(
    clippy::disallowed_methods,
    reason = "the CLI is where settings are read: the PTX cache goes under $HOME"
)]
fn gpu_options() -> GpuOptions {
    GpuOptions {
        lib_dirs: python_cuda_lib_dirs(),
        ptx_cache: std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tessera/ptx")),
    }
}

fn device_dtype(s: &str) -> Result<DeviceDtype> {
    DeviceDtype::parse(s).with_context(|| format!("unknown --dtype '{s}' (f32, bf16 or f16)"))
}

/// The engine's CUDA ranks for `--dtype` (rank r on GPU r).
pub(crate) fn loader(dtype: &str) -> Result<tessera_cuda::CudaLoader> {
    Ok(tessera_cuda::CudaLoader {
        options: gpu_options(),
        dtype: device_dtype(dtype)?,
        first_device: 0,
    })
}

/// Arguments of `tessera gpu-check`.
#[derive(Args)]
pub(crate) struct GpuCheckArgs {
    /// CPU outputs of the random model (`tessera random-reference`).
    #[arg(long)]
    reference: PathBuf,
    /// JSON results, rewritten after each stage.
    #[arg(long)]
    out: PathBuf,
    /// Where the random model of the reference is written.
    #[arg(long, default_value = "/tmp/tessera-random-model")]
    model_dir: PathBuf,
    /// Seed of the op checks' inputs (default: the clock, so inputs are fresh each run).
    #[arg(long)]
    op_seed: Option<u64>,
    /// Shape of the benchmarked model.
    #[arg(long, default_value = "llama3-8b")]
    bench_shape: String,
    /// Weight dtype of the benchmarked model.
    #[arg(long, default_value = "bf16")]
    bench_dtype: String,
    /// Decode batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    batches: Vec<usize>,
    /// Prompt tokens per sequence in the prefill benchmark.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Timed decode steps per batch size.
    #[arg(long, default_value_t = 16)]
    decode_steps: usize,
    /// Skip the benchmark stage.
    #[arg(long)]
    no_bench: bool,
    /// Skip the NCCL stage (tools/gpu/check.sh runs it last, alone, with its own deadline).
    #[arg(long, conflicts_with = "only_nccl")]
    no_nccl: bool,
    /// Run the device and NCCL stages only.
    #[arg(long)]
    only_nccl: bool,
}

/// Results so far, written whole after every stage (a timeout still leaves them).
struct Results {
    path: PathBuf,
    map: Map<String, Value>,
}

impl Results {
    fn stage(&mut self, name: &str, value: Value) -> Result<()> {
        self.map.insert(name.to_string(), value);
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&self.map)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

/// Runs every stage; a failing stage is recorded and the next one still runs.
// TODO(issue 14): move the GPU check stages into tessera-gpu-check and split them there.
#[allow(clippy::too_many_lines)]
pub(crate) fn gpu_check(a: &GpuCheckArgs) -> Result<()> {
    let mut res = Results {
        path: a.out.clone(),
        map: Map::new(),
    };
    let options = gpu_options();
    let started = Instant::now();
    let gpu = match Gpu::new(0, &options) {
        Ok(g) => g,
        Err(e) => {
            res.stage(
                "device",
                json!({"error": e.to_string(), "lib_dirs": options.lib_dirs}),
            )?;
            return Err(e.into());
        }
    };
    res.stage("device", json!({"name": gpu.name(), "arch": gpu.arch().target(), "setup_s": started.elapsed().as_secs_f64(), "lib_dirs": options.lib_dirs}))?;
    let mut table: Vec<String> = vec![format!(
        "device       {} ({})",
        gpu.name(),
        gpu.arch().target()
    )];

    if a.only_nccl {
        nccl_stage(&gpu, &options, &mut res, &mut table)?;
        return print_table(&mut res, started, &table);
    }

    let seed = a.op_seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let ops = tessera_gpu_check::opcheck::check_all(&gpu, seed);
    match &ops {
        Ok(reports) => {
            let failed: Vec<&str> = reports
                .iter()
                .filter(|r| !r.passed)
                .map(|r| r.op.as_str())
                .collect();
            table.push(format!(
                "ops          {}/{} passed{}",
                reports.len() - failed.len(),
                reports.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" FAILED: {}", failed.join("; "))
                }
            ));
            res.stage("ops", json!({"seed": seed, "reports": reports}))?;
        }
        Err(e) => {
            table.push(format!("ops          ERROR {e}"));
            res.stage("ops", json!({"seed": seed, "error": e.to_string()}))?;
        }
    }

    for (name, kv) in [
        ("random_model", KvDtype::F32),
        ("random_model_bf16_kv", KvDtype::Bf16),
    ] {
        match check_random_model(a, &options, kv) {
            Ok((v, line)) => {
                table.push(line);
                res.stage(name, v)?;
            }
            Err(e) => {
                table.push(format!("model {kv:?}  ERROR {e:#}"));
                res.stage(name, json!({"error": format!("{e:#}")}))?;
            }
        }
    }

    for (name, label, check) in [
        (
            "graphs",
            "cuda graphs ",
            check_graphs as fn(&GpuCheckArgs, &GpuOptions) -> Result<(Value, String)>,
        ),
        ("engine", "engine cuda ", check_engine),
    ] {
        match check(a, &options) {
            Ok((v, line)) => {
                table.push(line);
                res.stage(name, v)?;
            }
            Err(e) => {
                table.push(format!("{label} ERROR {e:#}"));
                res.stage(name, json!({"error": format!("{e:#}")}))?;
            }
        }
    }

    if !a.no_nccl {
        nccl_stage(&gpu, &options, &mut res, &mut table)?;
    }

    let bandwidth = measure_bandwidth(&gpu);
    match &bandwidth {
        Ok(bw) => {
            table.push(format!("copy bw      {:.0} GB/s (read + write)", bw / 1e9));
            res.stage("bandwidth", json!({"bytes_per_s": bw}))?;
        }
        Err(e) => {
            table.push(format!("copy bw      ERROR {e:#}"));
            res.stage("bandwidth", json!({"error": format!("{e:#}")}))?;
        }
    }
    drop(gpu);

    if !a.no_bench {
        let bw = bandwidth.as_ref().ok().copied();
        match bench(a, &options, bw, &mut res, &mut table) {
            Ok(()) => {}
            Err(e) => {
                table.push(format!("bench        ERROR {e:#}"));
                res.stage("bench_error", json!(format!("{e:#}")))?;
            }
        }
    }
    print_table(&mut res, started, &table)
}

/// Records the total time and prints the short table.
fn print_table(res: &mut Results, started: Instant, table: &[String]) -> Result<()> {
    res.stage("total_s", json!(started.elapsed().as_secs_f64()))?;
    println!(
        "\n== tessera gpu-check ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    for line in table {
        println!("{line}");
    }
    Ok(())
}

/// NCCL with one rank, recorded as stage `nccl`.
fn nccl_stage(
    gpu: &Gpu,
    options: &GpuOptions,
    res: &mut Results,
    table: &mut Vec<String>,
) -> Result<()> {
    match check_nccl(gpu, options) {
        Ok(v) => {
            let verdict = if v["passed"] == json!(true) {
                "passed"
            } else {
                "FAILED"
            };
            table.push(format!("nccl 1 rank  {verdict}"));
            res.stage("nccl", v)
        }
        Err(e) => {
            table.push(format!("nccl 1 rank  ERROR {e:#}"));
            res.stage("nccl", json!({"error": format!("{e:#}")}))
        }
    }
}

/// The carried reference, with its random model written to `a.model_dir` and planned for
/// one rank.
struct RandomModel {
    reference: RandomReference,
    config: ModelConfig,
    plan: ShardPlan,
}

fn random_model(a: &GpuCheckArgs) -> Result<RandomModel> {
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

/// The model in `dir` on GPU 0, f32 weights, one rank.
fn load_f32(
    config: &ModelConfig,
    plan: &ShardPlan,
    dir: &Path,
    options: &GpuOptions,
) -> Result<CudaRankModel> {
    let files = WeightFiles::open(dir)?;
    Ok(CudaRankModel::load(
        Gpu::new(0, options)?,
        config,
        &files,
        plan,
        0,
        DeviceDtype::F32,
        ReduceMode::Fast,
    )?)
}

/// The random model of the reference at f32 against the carried CPU logits and tokens,
/// its keys and values in a pool of `kv` (bf16: the grouped decode kernel for every row;
/// its rounding allows a looser bound, and tokens are reported, not required to match).
fn check_random_model(
    a: &GpuCheckArgs,
    options: &GpuOptions,
    kv: KvDtype,
) -> Result<(Value, String)> {
    let started = Instant::now();
    let RandomModel {
        reference,
        config,
        plan,
    } = random_model(a)?;
    let written_s = started.elapsed().as_secs_f64();
    let mut model = load_f32(&config, &plan, &a.model_dir, options)?;
    let n = reference.greedy.len();
    let blocks = (reference.prompt.len() + n).div_ceil(BLOCK_SIZE);
    let mut cache = CudaKvCache::new(model.gpu(), &model.kv_widths(), blocks, BLOCK_SIZE, kv)?;
    let sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
    };
    let out = cuda_generate(
        &mut model,
        &mut SingleGpu,
        &mut cache,
        &reference.prompt,
        n,
        &sampling,
        &[],
    )?;
    let scale = reference
        .top_logits
        .iter()
        .map(|(_, v)| v.abs())
        .fold(0.0f32, f32::max)
        .max(1e-6);
    let mut max_diff = 0.0f32;
    let mut any_nan = false;
    for &(id, v) in &reference.top_logits {
        let g = out
            .prompt_logits
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NAN);
        any_nan |= !g.is_finite();
        max_diff = max_diff.max((g - v).abs());
    }
    let logits_rel = if any_nan {
        f32::INFINITY
    } else {
        max_diff / scale
    };
    let (tokens_ok, compared) = tokens_match(&out.completion, &reference);
    let passed = match kv {
        KvDtype::F32 => logits_rel <= 1e-3 && tokens_ok,
        KvDtype::Bf16 => logits_rel <= 2e-2,
    };
    let line = format!(
        "model {:<6} {} ({}: top-{} logits rel {:.1e}, tokens {}/{} compared {})",
        if kv == KvDtype::F32 { "f32" } else { "bf16kv" },
        if passed { "passed" } else { "FAILED" },
        reference.shape,
        reference.top_logits.len(),
        logits_rel,
        compared,
        n,
        if tokens_ok { "match" } else { "DIFFER" }
    );
    let v = json!({
        "shape": reference.shape, "seed": reference.seed, "kv": format!("{kv:?}"), "passed": passed, "logits_rel_err": logits_rel,
        "gpu_tokens": out.completion, "cpu_tokens": reference.greedy, "tokens_ok": tokens_ok,
        "model_write_s": written_s, "total_s": started.elapsed().as_secs_f64(),
    });
    Ok((v, line))
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

/// The engine's path (`generate`/`serve --device cuda`): the coordinator with CUDA ranks
/// on the random model, greedy, against the carried CPU tokens.
fn check_engine(a: &GpuCheckArgs, options: &GpuOptions) -> Result<(Value, String)> {
    let RandomModel {
        reference, plan, ..
    } = random_model(a)?;
    let loader = tessera_cuda::CudaLoader {
        options: options.clone(),
        dtype: DeviceDtype::F32,
        first_device: 0,
    };
    let started = Instant::now();
    let engine_options = tessera_engine::EngineOptions {
        kv_cache_bytes: 64 << 20,
        // The CUDA ranks sum with NCCL's own order (they refuse the deterministic mode).
        reduce: tessera_plan::ReduceMode::Fast,
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
    let (passed, compared) = tokens_match(&out.completion, &reference);
    let line = format!(
        "engine cuda  {} (coordinator + CudaLoader, tokens {compared}/{} {})",
        if passed { "passed" } else { "FAILED" },
        reference.greedy.len(),
        if passed { "match" } else { "DIFFER" }
    );
    Ok((
        json!({"passed": passed, "gpu_tokens": out.completion, "cpu_tokens": reference.greedy, "total_s": started.elapsed().as_secs_f64()}),
        line,
    ))
}

/// Decode steps replayed from CUDA graphs give the bits of eager steps (which pad the
/// same way): a batch of one and a batch of three (padded to four).
// TODO(issue 14): move the GPU check stages into tessera-gpu-check and split them there.
#[allow(clippy::too_many_lines)]
fn check_graphs(a: &GpuCheckArgs, options: &GpuOptions) -> Result<(Value, String)> {
    let RandomModel {
        reference,
        config,
        plan,
    } = random_model(a)?;
    let mut model = load_f32(&config, &plan, &a.model_dir, options)?;
    let steps = 8;
    let mut cases = Vec::new();
    let mut all_ok = true;
    for batch in [1usize, 3] {
        let mut runs = Vec::new();
        for graphs in [false, true] {
            model.set_graphs(graphs);
            let per_seq = (reference.prompt.len() + steps + 1).div_ceil(BLOCK_SIZE);
            let mut cache = model.new_cache(per_seq * batch, BLOCK_SIZE)?;
            let tables: Vec<Vec<u32>> = (0..batch)
                .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
                .collect();
            let prompts: Vec<Vec<u32>> = (0..batch)
                .map(|s| {
                    crate::random_reference::prompt_for(
                        s as u64 + 1,
                        reference.prompt.len(),
                        config.shape.vocab,
                    )
                })
                .collect();
            let seqs: Vec<StepSeq> = (0..batch)
                .map(|s| StepSeq {
                    id: s as u64,
                    tokens: prompts[s].clone(),
                    start: 0,
                    block_table: tables[s].clone(),
                    logits: LogitRows::Last,
                })
                .collect();
            let rows = model.forward(&mut SingleGpu, &mut cache, &seqs)?;
            let mut next = model.greedy(rows)?;
            let mut all_logits = Vec::new();
            let mut tokens = Vec::new();
            for step in 0..steps {
                let toks: Vec<[u32; 1]> = next.iter().map(|&i| [i.max(0) as u32]).collect();
                tokens.extend(toks.iter().map(|t| t[0]));
                let seqs: Vec<StepSeq> = (0..batch)
                    .map(|s| StepSeq {
                        id: s as u64,
                        tokens: toks[s].to_vec(),
                        start: reference.prompt.len() + step,
                        block_table: tables[s].clone(),
                        logits: LogitRows::Last,
                    })
                    .collect();
                let rows = model.forward(&mut SingleGpu, &mut cache, &seqs)?;
                all_logits.extend(model.logits(rows)?);
                next = model.greedy(rows)?;
            }
            runs.push((all_logits, tokens, model.graph_stats()));
        }
        let (eager, graph) = (&runs[0], &runs[1]);
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

/// NCCL with one rank: all-reduce and all-gather leave the data as it was.
fn check_nccl(gpu: &Gpu, options: &GpuOptions) -> Result<Value> {
    let mut comms = NcclCommunicator::init_all(&[gpu], &options.lib_dirs)?;
    let comm = comms.pop().context("one communicator")?;
    let mut comm = comm;
    let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
    let mut host = data.clone();
    tessera_comm::Communicator::all_reduce_sum(&mut comm, &mut host)?;
    let mut gathered = vec![f32::NAN; data.len()];
    tessera_comm::Communicator::all_gather(&mut comm, &data, &mut gathered)?;
    let mut dev = gpu.upload(&data)?;
    DeviceComm::all_reduce_sum(&mut comm, gpu, &mut dev, data.len())?;
    let dev_back = gpu.download(&dev)?;
    let passed = host == data && gathered == data && dev_back == data;
    Ok(
        json!({"passed": passed, "all_reduce": host == data, "all_gather": gathered == data, "device_all_reduce": dev_back == data}),
    )
}

/// Device-to-device copy bandwidth, bytes read plus written per second (median of 10).
fn measure_bandwidth(gpu: &Gpu) -> Result<f64> {
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

/// Prefill and decode tokens/s of a device-random model at each batch size, next to the
/// HBM bound (every weight read once per decode step at the measured copy bandwidth).
// TODO(issue 14): move the GPU check stages into tessera-gpu-check and split them there.
#[allow(clippy::too_many_lines)]
fn bench(
    a: &GpuCheckArgs,
    options: &GpuOptions,
    bandwidth: Option<f64>,
    res: &mut Results,
    table: &mut Vec<String>,
) -> Result<()> {
    let config = config_for(&a.bench_shape)?;
    let plan = Strategy::Megatron.plan(&config.shape, 1)?;
    let dtype = device_dtype(&a.bench_dtype)?;
    let started = Instant::now();
    let mut model = CudaRankModel::load(
        Gpu::new(0, options)?,
        &config,
        &WeightFiles::random(11),
        &plan,
        0,
        dtype,
        ReduceMode::Fast,
    )?;
    let weight_bytes = model.weight_bytes();
    let load_s = started.elapsed().as_secs_f64();
    // Room for the prompt and two decode passes (graphs on, then off).
    let per_seq = (a.prompt_len + 2 * (a.decode_steps + 1) + 1).div_ceil(BLOCK_SIZE);
    let max_batch = a.batches.iter().copied().max().unwrap_or(1);
    let mut cache = model.new_cache(per_seq * max_batch, BLOCK_SIZE)?;
    let vocab = config.shape.vocab;
    let mut rows = Vec::new();
    let kv = format!("{:?}", model.preferred_kv()).to_lowercase();
    table.push(format!(
        "bench        {} {} weights {:.2} GB, {kv} KV pool (load {:.1} s)",
        a.bench_shape,
        a.bench_dtype,
        weight_bytes as f64 / 1e9,
        load_s
    ));
    table.push(
        "  batch  prefill tok/s  decode tok/s  (no graphs)  HBM bound tok/s  fraction".to_string(),
    );
    for &b in &a.batches {
        let tables: Vec<Vec<u32>> = (0..b)
            .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
            .collect();
        let prompts: Vec<Vec<u32>> = (0..b)
            .map(|s| crate::random_reference::prompt_for(s as u64, a.prompt_len, vocab))
            .collect();
        let seqs: Vec<StepSeq> = (0..b)
            .map(|s| StepSeq {
                id: s as u64,
                tokens: prompts[s].clone(),
                start: 0,
                block_table: tables[s].clone(),
                logits: LogitRows::Last,
            })
            .collect();
        model.gpu().synchronize()?;
        let t = Instant::now();
        let n = model.forward(&mut SingleGpu, &mut cache, &seqs)?;
        let mut next = model.greedy(n)?;
        let prefill_s = t.elapsed().as_secs_f64();
        // Graphs on (the default), then, for small batches where launches matter, off.
        model.set_graphs(true);
        let (decode_s, after) = decode_pass(
            &mut model,
            &mut cache,
            &tables,
            next,
            a.prompt_len,
            a.decode_steps,
        )?;
        next = after;
        let eager_s = if b <= 8 {
            model.set_graphs(false);
            let (secs, _) = decode_pass(
                &mut model,
                &mut cache,
                &tables,
                next,
                a.prompt_len + a.decode_steps + 1,
                a.decode_steps,
            )?;
            model.set_graphs(true);
            Some(secs)
        } else {
            None
        };
        let prefill_tps = (b * a.prompt_len) as f64 / prefill_s;
        let decode_tps = (b * a.decode_steps) as f64 / decode_s;
        let eager_tps = eager_s.map(|e| (b * a.decode_steps) as f64 / e);
        let bound = bandwidth.map(|bw| b as f64 * bw / weight_bytes as f64);
        let fraction = bound.map(|x| decode_tps / x);
        table.push(format!(
            "  {b:>5}  {prefill_tps:>13.0}  {decode_tps:>12.1}  {:>11}  {:>15}  {:>8}",
            eager_tps.map_or("-".into(), |x| format!("{x:.1}")),
            bound.map_or("-".into(), |x| format!("{x:.1}")),
            fraction.map_or("-".into(), |f| format!("{f:.2}"))
        ));
        rows.push(json!({"batch": b, "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps, "decode_tokens_per_s_no_graphs": eager_tps, "graphs": model.graph_stats().0, "hbm_bound_tokens_per_s": bound, "fraction_of_bound": fraction, "prefill_s": prefill_s, "decode_s": decode_s}));
        res.stage("bench", json!({"shape": a.bench_shape, "dtype": a.bench_dtype, "kv": kv, "weight_bytes": weight_bytes, "load_s": load_s, "prompt_len": a.prompt_len, "decode_steps": a.decode_steps, "rows": rows}))?;
    }
    Ok(())
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
        let toks: Vec<[u32; 1]> = next.iter().map(|&i| [i.max(0) as u32]).collect();
        let seqs: Vec<StepSeq> = toks
            .iter()
            .zip(tables)
            .map(|(t, table)| StepSeq {
                id: 0,
                tokens: t.to_vec(),
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
