//! A fixed-bucket histogram of durations: the engine keeps one per rank for the collective
//! time per step, and the server its latency histograms; whoever exports metrics renders
//! them.

use serde::Serialize;

/// Bucket bounds (seconds, upper, inclusive) of [`crate::EngineStats::collective_step_seconds`].
pub const COLLECTIVE_STEP_BUCKETS: &[f64] = &[
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Observations of a duration, counted in fixed buckets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    /// Upper bounds of the buckets (seconds, inclusive), ascending.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than the bounds, the last `+Inf`.
    pub counts: Vec<u64>,
    /// Sum of the observations in seconds.
    pub sum: f64,
}

impl Default for Histogram {
    /// A histogram of collective time per step ([`COLLECTIVE_STEP_BUCKETS`]).
    fn default() -> Self {
        Self::new(COLLECTIVE_STEP_BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Counts one observation of `seconds`.
    pub fn observe(&mut self, seconds: f64) {
        let bucket = self.bounds.partition_point(|&b| b < seconds);
        self.counts[bucket] += 1;
        self.sum += seconds;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let mut h = Histogram::default();
        for s in [0.0, 1e-5, 2e-5, 0.3, 7.0] {
            h.observe(s);
        }
        assert_eq!(h.counts.len(), COLLECTIVE_STEP_BUCKETS.len() + 1);
        assert_eq!((h.counts[0], h.counts[1]), (2, 1), "bounds are inclusive");
        let at = |b: f64| {
            COLLECTIVE_STEP_BUCKETS
                .iter()
                .position(|&x| x == b)
                .unwrap()
        };
        assert_eq!(h.counts[at(0.5)], 1);
        assert_eq!(h.counts[COLLECTIVE_STEP_BUCKETS.len()], 1, "+Inf");
        assert_eq!(h.count(), 5);
        assert!((h.sum - 7.30003).abs() < 1e-12);
    }
}
