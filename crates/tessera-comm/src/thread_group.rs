//! The in-process communicator: each rank is a thread, buffers meet in shared memory.
//!
//! ```text
//!   rank 0 --write--> slot[0] \                       / sum slot[0..N] in rank order -> rank 0
//!   rank 1 --write--> slot[1]  > barrier: all written <  sum slot[0..N] in rank order -> rank 1
//!   rank 2 --write--> slot[2] /                       \ ...               then barrier: all read
//! ```
//!
//! Every rank computes the same sum in the same order, so all ranks hold bit-identical
//! results and none depends on thread timing. "Bytes moved" is what a rank writes into its
//! slot.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crate::barrier::SpinParkBarrier;
use crate::{CommError, CommStats, Communicator};

struct Shared {
    slots: Vec<RwLock<Vec<f32>>>,
    barrier: SpinParkBarrier,
}

/// Factory of the per-rank handles of one in-process group.
pub struct ThreadGroup;

impl ThreadGroup {
    /// Makes the `world` rank handles of a new group; hand one to each rank thread.
    ///
    /// Waiting ranks spin briefly only when every rank can have its own core
    /// (`world <= cores`), and park otherwise.
    pub fn create(world: usize) -> Vec<ThreadRank> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spins = if world <= cores { 20_000 } else { 0 };
        Self::create_with_spins(world, spins)
    }

    /// Like [`ThreadGroup::create`] with an explicit spin budget before parking.
    pub fn create_with_spins(world: usize, spins: u32) -> Vec<ThreadRank> {
        let shared = Arc::new(Shared {
            slots: (0..world).map(|_| RwLock::new(Vec::new())).collect(),
            barrier: SpinParkBarrier::new(world, spins),
        });
        (0..world)
            .map(|rank| ThreadRank {
                rank,
                shared: Arc::clone(&shared),
                stats: CommStats::default(),
            })
            .collect()
    }
}

/// One rank's handle on an in-process group.
pub struct ThreadRank {
    rank: usize,
    shared: Arc<Shared>,
    stats: CommStats,
}

impl ThreadRank {
    /// Aborts the whole group: every rank waiting in (or later entering) a collective fails.
    pub fn abort(&self) {
        self.shared.barrier.abort();
    }

    fn wait(&self) -> Result<(), CommError> {
        if self.shared.barrier.wait() {
            Ok(())
        } else {
            Err(CommError::Aborted)
        }
    }

    fn publish(&mut self, data: &[f32]) {
        let mut slot = self.shared.slots[self.rank]
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        slot.clear();
        // Exactly the largest contribution so far (no doubling slack): the slot's memory is
        // then a function of the largest step, not of the order the steps came in.
        slot.reserve_exact(data.len());
        slot.extend_from_slice(data);
        self.stats.bytes_moved += std::mem::size_of_val(data) as u64;
    }

    fn slot(&self, rank: usize) -> std::sync::RwLockReadGuard<'_, Vec<f32>> {
        self.shared.slots[rank]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `read` between the "all written" and "all read" barriers; aborts on error.
    fn exchange<T>(
        &mut self,
        data: &[f32],
        read: impl FnOnce(&Self) -> Result<T, CommError>,
    ) -> Result<T, CommError> {
        let start = Instant::now();
        self.stats.calls += 1;
        self.publish(data);
        self.wait()?;
        let result = read(self);
        if result.is_err() {
            self.abort();
        }
        self.wait()?;
        self.stats.time += start.elapsed();
        result
    }
}

impl Communicator for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.slots.len()
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<(), CommError> {
        let data = buf.to_vec();
        let world = self.world_size();
        self.exchange(&data, |me| {
            for r in 0..world {
                let got = me.slot(r).len();
                if got != buf.len() {
                    return Err(CommError::LengthMismatch {
                        op: "all_reduce_sum",
                        rank: r,
                        expected: buf.len(),
                        got,
                    });
                }
            }
            buf.copy_from_slice(&me.slot(0));
            for r in 1..world {
                let slot = me.slot(r);
                for (b, s) in buf.iter_mut().zip(slot.iter()) {
                    *b += *s;
                }
            }
            Ok(())
        })
    }

    fn reduce_scatter_ordered(
        &mut self,
        partials: &[f32],
        len: usize,
        keep: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Result<(), CommError> {
        let world = self.world_size();
        // A malformed contribution or range is caught by every rank when it reads the
        // slots, so all ranks fail the same collective together (none is left waiting).
        self.exchange(partials, |me| {
            let slots: Vec<_> = (0..world).map(|r| me.slot(r)).collect();
            let views: Vec<&[f32]> = slots.iter().map(|s| s.as_slice()).collect();
            crate::fold_contributions(out, len, keep, &views)
        })
    }

    fn all_gather(&mut self, local: &[f32], out: &mut [f32]) -> Result<(), CommError> {
        let world = self.world_size();
        self.exchange(local, |me| {
            let total: usize = (0..world).map(|r| me.slot(r).len()).sum();
            if total != out.len() {
                return Err(CommError::GatherLength {
                    expected: total,
                    got: out.len(),
                });
            }
            let mut offset = 0;
            for r in 0..world {
                let slot = me.slot(r);
                out[offset..offset + slot.len()].copy_from_slice(&slot);
                offset += slot.len();
            }
            Ok(())
        })
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<(), CommError> {
        let world = self.world_size();
        if root >= world {
            return Err(CommError::BadRoot { root, world });
        }
        let data = if self.rank == root {
            buf.to_vec()
        } else {
            Vec::new()
        };
        self.exchange(&data, |me| {
            let slot = me.slot(root);
            if slot.len() != buf.len() {
                return Err(CommError::LengthMismatch {
                    op: "broadcast",
                    rank: me.rank,
                    expected: slot.len(),
                    got: buf.len(),
                });
            }
            buf.copy_from_slice(&slot);
            Ok(())
        })
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.wait()
    }

    fn stats(&self) -> CommStats {
        self.stats
    }

    fn reset_stats(&mut self) {
        self.stats = CommStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run_group<T: Send + 'static>(
        world: usize,
        spins: u32,
        f: impl Fn(ThreadRank) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = ThreadGroup::create_with_spins(world, spins)
            .into_iter()
            .map(|comm| {
                let f = Arc::clone(&f);
                std::thread::spawn(move || f(comm))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn all_reduce_sums_in_rank_order_on_every_rank() {
        // Values chosen so that the summation order changes the f32 result.
        let vals = [1.0e8f32, 1.0, -1.0e8, 1.0];
        let out = run_group(4, 0, move |mut c| {
            let mut b = vec![vals[c.rank()]; 3];
            c.all_reduce_sum(&mut b).unwrap();
            b
        });
        let expected = ((vals[0] + vals[1]) + vals[2]) + vals[3];
        for b in out {
            assert_eq!(b, vec![expected; 3]);
        }
    }

    #[test]
    fn ordered_reduce_folds_every_vector_left_to_right_and_counts_what_each_rank_published() {
        // Rank r publishes r vectors (rank 0 none); the fold order decides the f32 result.
        let vals = [1.0e8f32, 1.0, -1.0e8, 1.0, 1.0, 3.0];
        let out = run_group(4, 10, move |mut c| {
            let r = c.rank();
            let first: usize = (0..r).sum();
            let partials: Vec<f32> = (first..first + r)
                .flat_map(|i| vec![vals[i], vals[i] * 2.0])
                .collect();
            let mut out = vec![f32::NAN; 2];
            c.all_reduce_ordered(&partials, &mut out).unwrap();
            (out, c.stats())
        });
        let fold = |scale: f32| {
            vals.iter()
                .skip(1)
                .fold(vals[0] * scale, |a, v| a + v * scale)
        };
        for (r, (got, stats)) in out.iter().enumerate() {
            assert_eq!(got, &vec![fold(1.0), fold(2.0)], "rank {r}");
            assert_eq!(stats.bytes_moved, (r * 2 * 4) as u64);
            assert_eq!(stats.calls, 1);
        }
    }

    #[test]
    fn ordered_reduce_scatter_keeps_each_ranks_range_of_the_ordered_fold() {
        let vals = [1.0e8f32, 1.0, -1.0e8, 1.0];
        let out = run_group(3, 10, move |mut c| {
            let r = c.rank();
            // Vectors of 4: rank 0 publishes one, rank 1 two, rank 2 one.
            let partials: Vec<f32> = match r {
                0 => vals.to_vec(),
                1 => vals.iter().chain(&vals).map(|v| v * 0.5).collect(),
                _ => vals.iter().rev().copied().collect(),
            };
            let keep = [0..2, 2..4, 1..4][r].clone();
            let mut out = vec![f32::NAN; keep.len()];
            c.reduce_scatter_ordered(&partials, 4, keep, &mut out)
                .unwrap();
            out
        });
        let full: Vec<f32> = (0..4)
            .map(|i| ((vals[i] + vals[i] * 0.5) + vals[i] * 0.5) + vals[3 - i])
            .collect();
        assert_eq!(out[0], full[0..2].to_vec());
        assert_eq!(out[1], full[2..4].to_vec());
        assert_eq!(out[2], full[1..4].to_vec());
    }

    #[test]
    fn a_malformed_ordered_contribution_fails_every_rank_instead_of_hanging() {
        let out = run_group(3, 0, |mut c| {
            let partials = if c.rank() == 1 {
                vec![1.0; 3]
            } else {
                vec![1.0; 2]
            };
            let mut out = vec![0.0; 2];
            c.all_reduce_ordered(&partials, &mut out).is_err()
        });
        assert_eq!(out, vec![true; 3]);
    }

    #[test]
    fn all_gather_concatenates_uneven_slices_in_rank_order() {
        let out = run_group(3, 100, |mut c| {
            let local: Vec<f32> = (0..=c.rank()).map(|i| (c.rank() * 10 + i) as f32).collect();
            let mut all = vec![0.0; 6];
            c.all_gather(&local, &mut all).unwrap();
            (all, c.stats())
        });
        for (all, stats) in &out {
            assert_eq!(all, &vec![0.0, 10.0, 11.0, 20.0, 21.0, 22.0]);
            assert_eq!(stats.calls, 1);
        }
        assert_eq!(out[2].1.bytes_moved, 12);
    }

    #[test]
    fn broadcast_copies_the_root_buffer() {
        let out = run_group(3, 0, |mut c| {
            let mut b = vec![c.rank() as f32; 2];
            c.broadcast(&mut b, 1).unwrap();
            b
        });
        assert!(out.iter().all(|b| b == &vec![1.0, 1.0]));
    }

    #[test]
    fn mismatched_lengths_fail_on_every_rank_instead_of_hanging() {
        let out = run_group(2, 0, |mut c| {
            let mut b = vec![1.0; 2 + c.rank()];
            c.all_reduce_sum(&mut b).is_err()
        });
        assert_eq!(out, vec![true, true]);
    }

    #[test]
    fn abort_wakes_a_waiting_rank() {
        let out = run_group(2, 0, |mut c| {
            if c.rank() == 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
                c.abort();
                true
            } else {
                matches!(c.barrier(), Err(CommError::Aborted))
            }
        });
        assert_eq!(out, vec![true, true]);
    }

    #[test]
    fn oversubscribed_group_makes_progress_with_parking() {
        // 6 ranks on (at most) 2 cores, many rounds: must finish, and all agree.
        let out = run_group(6, 0, |mut c| {
            let mut acc = 0.0f32;
            for i in 0..500 {
                let mut b = [c.rank() as f32 + i as f32];
                c.all_reduce_sum(&mut b).unwrap();
                acc += b[0];
            }
            acc
        });
        assert!(out.windows(2).all(|w| w[0] == w[1]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn all_reduce_equals_sequential_sum(world in 1usize..6, len in 0usize..40, seed in any::<u64>()) {
            let data: Vec<Vec<f32>> = (0..world)
                .map(|r| (0..len).map(|i| ((seed as usize ^ (r * 7919 + i * 31)) % 1000) as f32 * 0.37 - 100.0).collect())
                .collect();
            let mut expected = data[0].clone();
            for d in &data[1..] {
                for (e, x) in expected.iter_mut().zip(d) { *e += *x; }
            }
            let data = Arc::new(data);
            let out = run_group(world, 50, move |mut c| {
                let mut b = data[c.rank()].clone();
                c.all_reduce_sum(&mut b).unwrap();
                b
            });
            for b in out { prop_assert_eq!(&b, &expected); }
        }
    }
}
