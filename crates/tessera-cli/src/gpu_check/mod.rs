//! The hidden `tessera gpu-check` that `tools/gpu/check.sh` runs on a lent GPU machine:
//! every stage records its result (or its error) and the next one still runs; a short
//! table is printed last.

mod bench;
mod checks;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{json, Map, Value};
use tessera_cuda::{Gpu, KvDtype};

use crate::cuda::gpu_options;

/// Tokens per KV block on the GPU.
const BLOCK_SIZE: usize = 16;

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

/// Results so far, written whole after every stage (a timeout still leaves them), and the
/// table's lines.
struct Results {
    path: PathBuf,
    map: Map<String, Value>,
    table: Vec<String>,
}

impl Results {
    /// Records stage `name` in the JSON file.
    fn stage(&mut self, name: &str, value: Value) -> Result<()> {
        self.map.insert(name.to_string(), value);
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&self.map)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }

    /// Records a check that gives its JSON and table line, or its error under `label`.
    fn check(&mut self, name: &str, label: &str, out: Result<(Value, String)>) -> Result<()> {
        match out {
            Ok((v, line)) => {
                self.table.push(line);
                self.stage(name, v)
            }
            Err(e) => {
                self.table.push(format!("{label:<12} ERROR {e:#}"));
                self.stage(name, json!({"error": format!("{e:#}")}))
            }
        }
    }

    /// Records the total time and prints the short table.
    fn finish(&mut self, started: Instant) -> Result<()> {
        self.stage("total_s", json!(started.elapsed().as_secs_f64()))?;
        println!(
            "\n== tessera gpu-check ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        for line in &self.table {
            println!("{line}");
        }
        Ok(())
    }
}

/// Runs every stage; a failing stage is recorded and the next one still runs.
pub(crate) fn run(a: &GpuCheckArgs) -> Result<()> {
    let mut res = Results {
        path: a.out.clone(),
        map: Map::new(),
        table: Vec::new(),
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
    res.table.push(format!(
        "device       {} ({})",
        gpu.name(),
        gpu.arch().target()
    ));
    if a.only_nccl {
        res.check("nccl", "nccl 1 rank", checks::nccl(&gpu, &options))?;
        return res.finish(started);
    }
    op_stage(a, &gpu, &mut res)?;
    for (name, kv) in [
        ("random_model", KvDtype::F32),
        ("random_model_bf16_kv", KvDtype::Bf16),
    ] {
        let out = checks::random_model(a, &options, kv);
        res.check(name, &format!("model {kv:?}"), out)?;
    }
    res.check("graphs", "cuda graphs", checks::graphs(a, &options))?;
    if !a.no_nccl {
        res.check("nccl", "nccl 1 rank", checks::nccl(&gpu, &options))?;
    }
    let bandwidth = bench::measure_bandwidth(&gpu);
    let bw = bandwidth.as_ref().ok().copied();
    res.check(
        "bandwidth",
        "copy bw",
        bandwidth.map(|bw| {
            (
                json!({"bytes_per_s": bw}),
                format!("copy bw      {:.0} GB/s (read + write)", bw / 1e9),
            )
        }),
    )?;
    drop(gpu);
    if !a.no_bench {
        if let Err(e) = bench::bench(a, &options, bw, &mut res) {
            res.table.push(format!("bench        ERROR {e:#}"));
            res.stage("bench_error", json!(format!("{e:#}")))?;
        }
    }
    res.finish(started)
}

/// Every op of `tessera-cuda` against its CPU reference, from a fresh seed unless given.
fn op_stage(a: &GpuCheckArgs, gpu: &Gpu, res: &mut Results) -> Result<()> {
    let seed = a.op_seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let out = tessera_gpu_check::opcheck::check_all(gpu, seed)
        .with_context(|| format!("ops with seed {seed}"))
        .map(|reports| {
            let failed: Vec<&str> = reports
                .iter()
                .filter(|r| !r.passed)
                .map(|r| r.op.as_str())
                .collect();
            let line = format!(
                "ops          {}/{} passed{}",
                reports.len() - failed.len(),
                reports.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" FAILED: {}", failed.join("; "))
                }
            );
            (json!({"seed": seed, "reports": reports}), line)
        });
    res.check("ops", "ops", out)
}
