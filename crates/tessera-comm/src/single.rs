//! The trivial communicator of a world of one rank.

use crate::{CommError, CommStats, Communicator};

/// A group of one: every collective is the identity (or a copy) and moves nothing.
#[derive(Debug, Default)]
pub struct SingleRank {
    stats: CommStats,
}

impl SingleRank {
    /// Makes the communicator of a one-rank world.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Communicator for SingleRank {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<(), CommError> {
        self.stats.calls += 1;
        Ok(())
    }
    fn reduce_scatter_ordered(
        &mut self,
        partials: &[f32],
        len: usize,
        keep: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<(), CommError> {
        self.stats.calls += 1;
        crate::fold_contributions(out, len, keep, &[partials])
    }
    fn all_gather(&mut self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        self.stats.calls += 1;
        if out.len() != local.len() {
            return Err(CommError::GatherLength {
                expected: local.len(),
                got: out.len(),
            });
        }
        out.copy_from_slice(local);
        Ok(())
    }
    fn broadcast(&mut self, _buf: &mut [f32], root: usize) -> Result<(), CommError> {
        self.stats.calls += 1;
        if root != 0 {
            return Err(CommError::BadRoot { root, world: 1 });
        }
        Ok(())
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        Ok(())
    }
    fn stats(&self) -> CommStats {
        self.stats
    }
    fn reset_stats(&mut self) {
        self.stats = CommStats::default();
    }
}
