//! Making the `nvidia-nccl-cu13` wheel's NCCL loadable before a command that joins an NCCL
//! group runs (builds with `--features cuda`).
//!
//! cudarc opens NCCL by name (`libnccl.so` first); the wheel ships only `libnccl.so.2`, and
//! the loader matches an open library by path or soname, never by a name cudarc tries, so
//! loading the file in-process cannot help. The loader reads `LD_LIBRARY_PATH` once, at
//! process start. So when a command will run CUDA ranks in an NCCL group, NCCL does not
//! load and the wheel's file is found, this links it as `~/.cache/tessera/nccl/libnccl.so`
//! and replaces the process by the same binary with the same arguments, that folder first
//! on `LD_LIBRARY_PATH` and [`MARKER`] set, so it runs itself again at most once.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use tessera_cuda::nccl::{find_wheel_nccl, nccl_loadable, NCCL_LINK_NAME};
use tessera_cuda::nvrtc::python_cuda_lib_dirs;

/// Set (to the link's folder) in the environment of the second run, which never runs again.
const MARKER: &str = "TESSERA_NCCL_LINK_DIR";

/// The link's folder under `$HOME`.
const LINK_DIR: &str = ".cache/tessera/nccl";

/// What to do about NCCL before the command runs, once it is known not to load.
#[derive(Debug, PartialEq, Eq)]
enum NcclStep {
    /// Nothing can be done here: the command's own NCCL error says what to do.
    Proceed,
    /// Link `wheel` as `link_dir/libnccl.so` and run again with `link_dir` on the path.
    Relink {
        /// The wheel's `libnccl.so.2`.
        wheel: PathBuf,
        /// Folder of the link.
        link_dir: PathBuf,
    },
    /// This is the second run and NCCL still does not load.
    StillMissing,
}

/// The step for a process where NCCL does not load: `second_run` when [`MARKER`] is set,
/// `wheel` the wheel's file if found, `link_dir` where a link may go (`None`: no `$HOME`).
fn decide(second_run: bool, wheel: Option<PathBuf>, link_dir: Option<PathBuf>) -> NcclStep {
    match (second_run, wheel, link_dir) {
        (true, _, _) => NcclStep::StillMissing,
        (false, Some(wheel), Some(link_dir)) => NcclStep::Relink { wheel, link_dir },
        (false, _, _) => NcclStep::Proceed,
    }
}

/// Whether the parsed command runs CUDA ranks that join an NCCL group: `--device cuda`
/// with more than one rank (`--tp`, `--rank-memory`, a `--plan` of several ranks, or
/// `--nodes`), or `gpu-check` without `--no-nccl`.
fn needs_nccl(matches: &ArgMatches) -> bool {
    let mut name = "";
    let mut leaf = matches;
    while let Some((sub, m)) = leaf.subcommand() {
        (name, leaf) = (sub, m);
    }
    if name == "gpu-check" {
        return !leaf
            .try_get_one::<bool>("no_nccl")
            .ok()
            .flatten()
            .copied()
            .unwrap_or(false);
    }
    let cuda = leaf
        .try_get_one::<String>("device")
        .ok()
        .flatten()
        .is_some_and(|d| d == "cuda");
    cuda && several_ranks(leaf)
}

/// Whether the rank flags of a command ask for more than one rank.
fn several_ranks(m: &ArgMatches) -> bool {
    let count = |id: &str| m.try_get_one::<usize>(id).ok().flatten().copied();
    let rank_memory = m
        .try_get_many::<String>("rank_memory")
        .ok()
        .flatten()
        .map_or(0, Iterator::count);
    let plan = m.try_get_one::<PathBuf>("plan").ok().flatten();
    count("tp").unwrap_or(1) > 1
        || rank_memory > 1
        || count("nodes").unwrap_or(1) > 1
        || plan.is_some_and(|p| plan_world(p).is_none_or(|w| w > 1))
}

/// The `world_size` of a saved plan (`None` when unreadable: the command reports that).
fn plan_world(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let plan: serde_json::Value = serde_json::from_str(&text).ok()?;
    plan.get("world_size")?.as_u64()
}

/// Links `wheel` (made absolute) as `link_dir/libnccl.so`, replacing another link there
/// atomically (runs that start together each see a whole link); returns the link.
fn link_nccl(wheel: &Path, link_dir: &Path) -> std::io::Result<PathBuf> {
    let target = wheel.canonicalize()?;
    std::fs::create_dir_all(link_dir)?;
    let link = link_dir.join(NCCL_LINK_NAME);
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(link);
    }
    let fresh = link_dir.join(format!(".{NCCL_LINK_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    std::os::unix::fs::symlink(&target, &fresh)?;
    if let Err(e) = std::fs::rename(&fresh, &link) {
        let _ = std::fs::remove_file(&fresh);
        return Err(e);
    }
    Ok(link)
}

/// `LD_LIBRARY_PATH` with `dir` first and `old` after it, verbatim (`None` when `dir`
/// holds a `:`, which the loader would read as two folders).
fn library_path(dir: &Path, old: Option<&OsStr>) -> Option<OsString> {
    if dir.as_os_str().as_encoded_bytes().contains(&b':') {
        return None;
    }
    let mut path = dir.as_os_str().to_owned();
    if let Some(old) = old.filter(|o| !o.is_empty()) {
        path.push(":");
        path.push(old);
    }
    Some(path)
}

/// Before `matches`' command runs: when it needs NCCL and NCCL does not load, links the
/// wheel's file and runs this binary again (this call then does not return), or warns
/// when a second run still cannot load it. Failures here only warn: the command's own
/// NCCL error then says what to do.
#[allow(
    clippy::disallowed_methods,
    reason = "the CLI reads the environment: $HOME, the loader's path, the second-run marker"
)]
pub(crate) fn prepare(matches: &ArgMatches) {
    if !needs_nccl(matches) || nccl_loadable() {
        return;
    }
    let marker = std::env::var_os(MARKER);
    let wheel = find_wheel_nccl(&python_cuda_lib_dirs());
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    let link_dir = home.map(|h| PathBuf::from(h).join(LINK_DIR));
    match decide(marker.is_some(), wheel, link_dir) {
        NcclStep::Proceed => {}
        NcclStep::StillMissing => {
            let dir = marker.map(PathBuf::from).unwrap_or_default();
            tracing::warn!(link_dir = %dir.display(), "NCCL does not load even with the wheel's libnccl.so.2 linked as libnccl.so in link_dir, first on LD_LIBRARY_PATH");
        }
        NcclStep::Relink { wheel, link_dir } => {
            let old = std::env::var_os("LD_LIBRARY_PATH");
            let err = match (
                link_nccl(&wheel, &link_dir),
                library_path(&link_dir, old.as_deref()),
            ) {
                (Ok(_), Some(path)) => run_again(&link_dir, &path),
                (Err(e), _) => e,
                (Ok(_), None) => std::io::Error::other("the link's folder holds a ':'"),
            };
            tracing::warn!(wheel = %wheel.display(), link_dir = %link_dir.display(), "could not link NCCL and run again: {err}");
        }
    }
}

/// Replaces this process by the same binary with the same arguments, `library_path` as
/// `LD_LIBRARY_PATH` and [`MARKER`] set; returns only the error when that fails.
fn run_again(link_dir: &Path, library_path: &OsStr) -> std::io::Error {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    tracing::info!(link_dir = %link_dir.display(), "NCCL: linked the wheel's libnccl.so.2 as libnccl.so; running again with it on LD_LIBRARY_PATH");
    std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("LD_LIBRARY_PATH", library_path)
        .env(MARKER, link_dir)
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parsed(args: &[&str]) -> ArgMatches {
        crate::Cli::command()
            .try_get_matches_from(std::iter::once("tessera").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn nccl_is_needed_only_for_cuda_with_several_ranks_or_the_nccl_check() {
        let needs = |args: &[&str]| needs_nccl(&parsed(args));
        assert!(needs(&[
            "generate", "--device", "cuda", "--tp", "2", "--prompt", "hi"
        ]));
        assert!(!needs(&[
            "generate", "--device", "cuda", "--tp", "1", "--prompt", "hi"
        ]));
        assert!(!needs(&["generate", "--device", "cuda", "--prompt", "hi"]));
        assert!(!needs(&["generate", "--tp", "4", "--prompt", "hi"]));
        assert!(needs(&[
            "serve",
            "--device",
            "cuda",
            "--nodes",
            "2",
            "--node-rank",
            "1"
        ]));
        assert!(needs(&[
            "serve",
            "--device",
            "cuda",
            "--strategy",
            "memory-balanced",
            "--rank-memory",
            "80G,40G"
        ]));
        assert!(needs(&[
            "bench",
            "throughput",
            "--device",
            "cuda",
            "--tp",
            "2"
        ]));
        assert!(!needs(&["bench", "throughput", "--tp", "2"]));
        assert!(needs(&[
            "gpu-check",
            "--reference",
            "r",
            "--out",
            "o",
            "--only-nccl"
        ]));
        assert!(needs(&["gpu-check", "--reference", "r", "--out", "o"]));
        assert!(!needs(&[
            "gpu-check",
            "--reference",
            "r",
            "--out",
            "o",
            "--no-nccl"
        ]));
        assert!(!needs(&["plan", "--tp", "2"]));
    }

    #[test]
    fn a_saved_plan_needs_nccl_when_it_has_several_ranks_or_cannot_be_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (one, two) = (dir.path().join("one.json"), dir.path().join("two.json"));
        std::fs::write(&one, r#"{"world_size": 1}"#).expect("write");
        std::fs::write(&two, r#"{"world_size": 2}"#).expect("write");
        let missing = dir.path().join("missing.json");
        let needs = |plan: &Path| {
            let plan = plan.to_str().expect("utf-8 path");
            needs_nccl(&parsed(&["serve", "--device", "cuda", "--plan", plan]))
        };
        assert!(!needs(&one));
        assert!(needs(&two));
        assert!(needs(&missing));
    }

    #[test]
    fn relinks_once_and_only_with_a_wheel_and_a_home() {
        let (wheel, dir) = (PathBuf::from("/w/libnccl.so.2"), PathBuf::from("/h/nccl"));
        assert_eq!(
            decide(false, Some(wheel.clone()), Some(dir.clone())),
            NcclStep::Relink {
                wheel: wheel.clone(),
                link_dir: dir.clone()
            }
        );
        assert_eq!(
            decide(true, Some(wheel.clone()), Some(dir.clone())),
            NcclStep::StillMissing
        );
        assert_eq!(decide(false, None, Some(dir)), NcclStep::Proceed);
        assert_eq!(decide(false, Some(wheel), None), NcclStep::Proceed);
    }

    #[test]
    fn link_points_at_the_wheel_file_and_replaces_a_stale_link() {
        let root = tempfile::tempdir().expect("temp dir");
        let (old, new) = (root.path().join("old.so.2"), root.path().join("new.so.2"));
        std::fs::write(&old, b"old").expect("write");
        std::fs::write(&new, b"new").expect("write");
        let dir = root.path().join("cache/tessera/nccl");
        let link = link_nccl(&old, &dir).expect("first link");
        assert_eq!(link, dir.join("libnccl.so"));
        assert_eq!(std::fs::read(&link).expect("read"), b"old");
        assert_eq!(link_nccl(&old, &dir).expect("same link again"), link);
        link_nccl(&new, &dir).expect("relink");
        assert_eq!(
            std::fs::read_link(&link).expect("a link"),
            new.canonicalize().expect("abs")
        );
        let names: Vec<_> = std::fs::read_dir(&dir).expect("list").collect();
        assert_eq!(names.len(), 1, "no temporary link is left behind");
        assert!(link_nccl(&root.path().join("absent.so.2"), &dir).is_err());
    }

    #[test]
    fn library_path_puts_the_link_folder_first_and_keeps_the_rest_verbatim() {
        let dir = Path::new("/h/.cache/tessera/nccl");
        assert_eq!(
            library_path(dir, None),
            Some(OsString::from("/h/.cache/tessera/nccl"))
        );
        assert_eq!(
            library_path(dir, Some(OsStr::new(""))),
            Some(OsString::from("/h/.cache/tessera/nccl"))
        );
        assert_eq!(
            library_path(dir, Some(OsStr::new("/a::/b"))),
            Some(OsString::from("/h/.cache/tessera/nccl:/a::/b"))
        );
        assert_eq!(library_path(Path::new("/odd:dir"), None), None);
    }
}
