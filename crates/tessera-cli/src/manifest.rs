//! Experiment records: the `manifest.json` every bench run writes next to its results, so a
//! result can be reproduced and compared later (model and weights hash, plans, hardware,
//! build commit, seed, command line, date).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tessera_plan::{HardwareProfile, ShardPlan};

/// The commit this binary was built from (`build.rs`), or `unknown`.
const BUILD_COMMIT: &str = match option_env!("TESSERA_BUILD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// One weights file and its digest.
#[derive(Serialize)]
pub(crate) struct FileHash {
    /// File name inside the model directory.
    file: String,
    /// Size in bytes.
    bytes: u64,
    /// Lowercase hex SHA-256.
    sha256: String,
}

/// One (strategy, rank count) combination of a run, with its full plan.
#[derive(Serialize)]
pub(crate) struct PlanRecord {
    /// Strategy name.
    strategy: String,
    /// Rank count.
    tp: usize,
    /// The plan as `tessera plan --json` prints it.
    plan: serde_json::Value,
}

impl PlanRecord {
    /// The record of `plan`.
    pub(crate) fn of(plan: &ShardPlan) -> Result<Self> {
        Ok(Self {
            strategy: plan.strategy.clone(),
            tp: plan.world_size,
            plan: serde_json::to_value(plan)?,
        })
    }
}

/// Everything needed to reproduce a bench run.
#[derive(Serialize)]
pub(crate) struct RunManifest {
    /// Which bench (`scaling`, `latency`, ...).
    pub(crate) bench: String,
    /// UTC date and time of the run, ISO 8601.
    pub(crate) date_utc: String,
    /// The command line, program first.
    pub(crate) command_line: Vec<String>,
    /// Commit the binary was built from.
    pub(crate) build_commit: String,
    /// `git rev-parse HEAD` in the working directory at run time, if it is a checkout.
    pub(crate) run_commit: Option<String>,
    /// True when tracked files differed from `run_commit` at run time.
    pub(crate) run_tree_dirty: Option<bool>,
    /// The model directory, canonical (none for projections from a built-in shape).
    pub(crate) model_dir: Option<String>,
    /// SHA-256 of every `*.safetensors` file of the model, sorted by name.
    pub(crate) weights: Vec<FileHash>,
    /// Seed of prompts and sampling.
    pub(crate) seed: u64,
    /// Hardware profile used for predictions.
    pub(crate) hardware: HardwareProfile,
    /// Reduction of row-parallel partial sums the run used or assumed.
    pub(crate) reduce: serde_json::Value,
    /// Bench parameters (workload sizes, repeats, threads).
    pub(crate) parameters: serde_json::Value,
    /// Every combination run, with its full plan.
    pub(crate) runs: Vec<PlanRecord>,
    /// `/proc/loadavg` when the run started and when the manifest was written (other work
    /// on a shared machine moves the numbers).
    pub(crate) load_average: Vec<String>,
}

impl RunManifest {
    /// A manifest for `bench` on `model_dir` (if any); fills date, command line, commits and
    /// the weights hash.
    pub(crate) fn new(
        bench: &str,
        model_dir: Option<&Path>,
        seed: u64,
        hardware: HardwareProfile,
    ) -> Result<Self> {
        let (run_commit, dirty) = git_state();
        Ok(Self {
            bench: bench.to_string(),
            date_utc: utc_now(),
            command_line: std::env::args().collect(),
            build_commit: BUILD_COMMIT.to_string(),
            run_commit,
            run_tree_dirty: dirty,
            model_dir: model_dir.map(|d| {
                d.canonicalize()
                    .unwrap_or_else(|_| d.to_path_buf())
                    .display()
                    .to_string()
            }),
            weights: match model_dir {
                Some(d) => hash_weights(d)?,
                None => Vec::new(),
            },
            seed,
            hardware,
            reduce: serde_json::Value::Null,
            parameters: serde_json::Value::Null,
            runs: Vec::new(),
            load_average: load_average().into_iter().collect(),
        })
    }

    /// Writes `manifest.json` into `dir` and returns its path.
    pub(crate) fn write(&mut self, dir: &Path) -> Result<PathBuf> {
        self.load_average.extend(load_average());
        let path = dir.join("manifest.json");
        // Compact: full plans of 8B-sized models on 8 ranks make a pretty manifest megabytes.
        std::fs::write(&path, serde_json::to_string(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// Writes a single-plan bench's `result` as `dir/<name>` with its `manifest.json`.
pub(crate) fn write_single_run(
    dir: &Path,
    name: &str,
    result: &impl Serialize,
    mut manifest: RunManifest,
    plan: &ShardPlan,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(result)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    manifest.runs.push(PlanRecord::of(plan)?);
    manifest.write(dir)?;
    Ok(())
}

/// The system's load averages (1, 5, 15 minutes), where `/proc/loadavg` exists.
fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// SHA-256 of every `*.safetensors` file in `dir` (about 1 s per 500 MB).
fn hash_weights(dir: &Path) -> Result<Vec<FileHash>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for path in files {
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            bytes += n as u64;
        }
        out.push(FileHash {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes,
            sha256: hex(&hasher.finalize()),
        });
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The checkout's commit and whether tracked files differ from it (None outside a checkout).
fn git_state() -> (Option<String>, Option<bool>) {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]);
    let dirty = commit
        .as_ref()
        .and_then(|_| run(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    (commit, dirty)
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Current UTC date as `YYYY-MM-DD`.
pub(crate) fn utc_date() -> String {
    utc_now()[..10].to_string()
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_of_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }

    #[test]
    fn weights_hash_is_the_sha256_of_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("model.safetensors"), b"abc").expect("write");
        std::fs::write(dir.path().join("config.json"), b"{}").expect("write");
        let h = hash_weights(dir.path()).expect("hashes");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].bytes, 3);
        assert_eq!(
            h[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
