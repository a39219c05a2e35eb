//! Communicators: how ranks exchange activations.
//!
//! One trait, [`Communicator`], with a single-rank implementation ([`SingleRank`]) and an
//! in-process one ([`ThreadGroup`]) where each rank is a thread and buffers meet in shared
//! memory. Reductions always sum in rank order 0, 1, ..., N-1, so a result never depends on
//! which thread arrived first. Every implementation counts the bytes it moves
//! ([`CommStats`]), defined once: the bytes a rank writes into shared memory (its
//! contribution), whatever the collective.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod barrier;
mod single;
mod thread_group;

use std::time::Duration;

pub use single::SingleRank;
pub use thread_group::{ThreadGroup, ThreadRank};

/// Why a collective failed.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// Another rank failed and aborted the group; this rank must stop too.
    #[error("the rank group was aborted by a failing rank")]
    Aborted,
    /// Ranks called a collective with buffers of different lengths.
    #[error("{op}: rank {rank} passed {got} elements but rank 0 passed {expected}")]
    LengthMismatch {
        /// The collective.
        op: &'static str,
        /// The rank whose length differs.
        rank: usize,
        /// Length on rank 0.
        expected: usize,
        /// Length on `rank`.
        got: usize,
    },
    /// The output buffer of a gather has the wrong length.
    #[error("all_gather: output holds {got} elements but the ranks contributed {expected}")]
    GatherLength {
        /// Sum of contributions.
        expected: usize,
        /// Output length.
        got: usize,
    },
    /// The transport under the collective (e.g. NCCL) failed.
    #[error("collective transport failed: {0}")]
    Backend(String),
    /// An ordered reduction got partials that are not whole vectors of the output's length.
    #[error("all_reduce_ordered: {got} partial elements are not whole vectors of {len}")]
    PartialsLength {
        /// Length of the output vector.
        len: usize,
        /// Elements of partials passed (or published by some rank).
        got: usize,
    },
    /// A reduce-scatter asked to keep a range outside the vectors, or gave an output of
    /// another length.
    #[error(
        "reduce_scatter_ordered: keep {start}..{end} of vectors {len} long into an output of {out}"
    )]
    KeepRange {
        /// Length of the reduced vectors.
        len: usize,
        /// Start of the kept range.
        start: usize,
        /// End of the kept range.
        end: usize,
        /// Length of the output.
        out: usize,
    },
    /// A broadcast named a root outside the group.
    #[error("broadcast root {root} is outside a group of {world} ranks")]
    BadRoot {
        /// The root asked for.
        root: usize,
        /// The group size.
        world: usize,
    },
}

/// Folds `vectors` (each `out.len()` long, in order) into `out`: the first is copied, the
/// rest are added one after the other. Zeros when there is none.
pub(crate) fn fold_into<'a>(out: &mut [f32], vectors: impl IntoIterator<Item = &'a [f32]>) {
    let mut first = true;
    for v in vectors {
        if first {
            out.copy_from_slice(v);
            first = false;
        } else {
            for (o, p) in out.iter_mut().zip(v) {
                *o += *p;
            }
        }
    }
    if first {
        out.fill(0.0);
    }
}

/// The ordered fold behind [`Communicator::all_reduce_ordered`] and
/// [`Communicator::reduce_scatter_ordered`]: every contribution (in rank order) is cut into
/// vectors of `len`, and elements `keep` of those vectors are folded into `out`.
pub fn fold_contributions(
    out: &mut [f32],
    len: usize,
    keep: std::ops::Range<usize>,
    contributions: &[&[f32]],
) -> Result<(), CommError> {
    check_keep(len, &keep, out.len())?;
    for c in contributions {
        check_partials(len, c.len())?;
    }
    let vectors = contributions
        .iter()
        .flat_map(|c| c.chunks_exact(len.max(1)))
        .map(|v| &v[keep.clone()]);
    fold_into(out, vectors);
    Ok(())
}

/// Checks that `keep` lies inside a vector of `len` and that `out` holds exactly `keep`.
pub fn check_keep(len: usize, keep: &std::ops::Range<usize>, out: usize) -> Result<(), CommError> {
    if keep.start > keep.end || keep.end > len || out != keep.len() {
        return Err(CommError::KeepRange {
            len,
            start: keep.start,
            end: keep.end,
            out,
        });
    }
    Ok(())
}

/// Checks that `got` elements are whole vectors of `len` (an empty output takes none).
pub fn check_partials(len: usize, got: usize) -> Result<(), CommError> {
    if (len == 0 && got != 0) || (len != 0 && !got.is_multiple_of(len)) {
        return Err(CommError::PartialsLength { len, got });
    }
    Ok(())
}

/// Counters of one rank's collective traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommStats {
    /// Collectives called.
    pub calls: u64,
    /// Bytes this rank wrote into shared memory (its contributions).
    pub bytes_moved: u64,
    /// Wall time spent inside collectives (waiting included).
    pub time: Duration,
}

/// Collective operations among the ranks of one group, called by every rank in the same order.
pub trait Communicator: Send {
    /// This rank's index in `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of ranks in the group.
    fn world_size(&self) -> usize;
    /// Replaces `buf` on every rank by the element-wise sum over ranks, summed in rank order.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError>;
    /// Deterministic sum: `out` = the left-to-right fold of every rank's partial vectors,
    /// rank by rank in rank order and in order within a rank.
    ///
    /// A rank passes zero or more vectors of `out.len()` elements back to back. Nothing is
    /// reassociated, so when the vectors are the fixed reduction chunks of a row-parallel
    /// matmul in chunk order, the result has the same bits at every rank count. With no
    /// vector anywhere the result is zeros.
    fn all_reduce_ordered(&mut self, partials: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let len = out.len();
        self.reduce_scatter_ordered(partials, len, 0..len, out)
    }
    /// [`Communicator::all_reduce_ordered`] of vectors `len` long, of which this rank keeps
    /// only the elements `keep` (in `out`, `keep.len()` long): the reduce-scatter of
    /// sequence parallelism, where each rank keeps its own rows. Ranks may keep different,
    /// even overlapping or empty, ranges.
    fn reduce_scatter_ordered(
        &mut self,
        partials: &[f32],
        len: usize,
        keep: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<(), CommError>;
    /// Concatenates every rank's `local` (lengths may differ) in rank order into `out`.
    fn all_gather(&mut self, local: &[f32], out: &mut [f32]) -> Result<(), CommError>;
    /// Copies `buf` of rank `root` into `buf` on every rank.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<(), CommError>;
    /// Traffic counters since creation (or the last [`Communicator::reset_stats`]).
    fn stats(&self) -> CommStats;
    /// Sets the traffic counters back to zero.
    fn reset_stats(&mut self);
}
