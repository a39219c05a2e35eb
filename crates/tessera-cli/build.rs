//! Records the commit the binary is built from (`TESSERA_BUILD_COMMIT`) for experiment manifests.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn main() {
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        // Tracked files that differ from the commit make the binary not that commit's.
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        let suffix = if dirty { "-dirty" } else { "" };
        println!("cargo:rustc-env=TESSERA_BUILD_COMMIT={commit}{suffix}");
    }
    // Rebuild the constant when HEAD or the index moves (a commit, a checkout, an add);
    // works in worktrees too. An edit not yet added is seen at the next commit or add.
    for path in ["HEAD", "logs/HEAD", "index"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
