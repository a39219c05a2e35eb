//! What a rank thread runs: the loader and worker types live beside the model
//! ([`tessera_model::worker`]); the engine decides how many CPU threads each rank gets.

pub use tessera_model::worker::{CpuLoader, RankLoader, RankSetup, RankStarter, RankWorker};

/// CPU threads for each of `ranks` ranks of this process: `threads` (default: every core)
/// shared evenly, at least one each.
pub(crate) fn threads_per_rank(threads: Option<usize>, ranks: usize) -> usize {
    let cores =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (cores / ranks.max(1)).max(1)
}
