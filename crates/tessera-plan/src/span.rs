//! Half-open index ranges and the pure slice arithmetic that splits a dimension across ranks.

use serde::{Deserialize, Serialize};

/// A half-open range `[start, end)` of indices along one dimension (heads, rows, vocabulary ids).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Span {
    /// First index in the range.
    pub start: usize,
    /// One past the last index in the range.
    pub end: usize,
}

impl Span {
    /// Makes the span `[start, end)`.
    pub const fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The span `[0, len)`.
    pub const fn full(len: usize) -> Self {
        Self { start: 0, end: len }
    }

    /// Number of indices in the span (0 when `end <= start`).
    pub const fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// True when the span holds no index.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `index` lies inside the span.
    pub const fn contains(&self, index: usize) -> bool {
        index >= self.start && index < self.end
    }

    /// The span scaled by `factor` (heads to rows: a head span times `head_dim`).
    pub const fn scaled(&self, factor: usize) -> Self {
        Self {
            start: self.start * factor,
            end: self.end * factor,
        }
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// Splits `total` indices into `world` contiguous spans as evenly as possible.
///
/// The first `total % world` ranks get one index more than the rest; ranks may get an
/// empty span when `world > total`.
///
/// ```text
///   total = 9, world = 4:   [0..3) [3..5) [5..7) [7..9)
/// ```
pub fn even_spans(total: usize, world: usize) -> Vec<Span> {
    if world == 0 {
        return Vec::new();
    }
    let base = total / world;
    let extra = total % world;
    let mut spans = Vec::with_capacity(world);
    let mut start = 0;
    for rank in 0..world {
        let len = base + usize::from(rank < extra);
        spans.push(Span::new(start, start + len));
        start += len;
    }
    spans
}

/// Splits `total` indices into contiguous spans proportional to `weights` (one per rank).
///
/// Sizes are rounded down to multiples of `align` (except the last span, which takes the
/// remainder) so that splits land on whole units such as SIMD chunks. Used for uneven
/// splits sized by each rank's memory.
pub fn weighted_spans(total: usize, weights: &[f64], align: usize) -> Vec<Span> {
    let align = align.max(1);
    let sum: f64 = weights.iter().copied().filter(|w| *w > 0.0).sum();
    let mut spans = Vec::with_capacity(weights.len());
    let mut start = 0usize;
    for (rank, w) in weights.iter().enumerate() {
        let end = if rank + 1 == weights.len() {
            total
        } else if sum <= 0.0 {
            start
        } else {
            let ideal = (total as f64 * w.max(0.0) / sum).round() as usize;
            (start + ideal / align * align).min(total)
        };
        spans.push(Span::new(start, end));
        start = end;
    }
    spans
}

/// The smallest span of key/value heads that the query heads in `q_heads` read.
///
/// With grouped-query attention query head `h` reads key/value head `h / group` where
/// `group = n_heads / n_kv_heads`. An empty query span needs no key/value head.
///
/// ```text
///   9 query heads, 3 kv heads (group 3), query heads 0..5 -> kv heads 0..2
///   q: 0 1 2 | 3 4 [5 6 7 8]
///   kv:  0   |  1  |  2
/// ```
pub fn kv_span_for(q_heads: Span, n_heads: usize, n_kv_heads: usize) -> Span {
    if q_heads.is_empty() || n_kv_heads == 0 || n_heads == 0 {
        return Span::new(0, 0);
    }
    let group = n_heads / n_kv_heads;
    Span::new(q_heads.start / group, (q_heads.end - 1) / group + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn even_spans_gives_first_ranks_the_remainder() {
        let s = even_spans(9, 4);
        assert_eq!(
            s,
            vec![
                Span::new(0, 3),
                Span::new(3, 5),
                Span::new(5, 7),
                Span::new(7, 9)
            ]
        );
    }

    #[test]
    fn even_spans_with_more_ranks_than_items_leaves_empty_spans() {
        let s = even_spans(2, 4);
        assert_eq!(
            s.iter().map(Span::len).collect::<Vec<_>>(),
            vec![1, 1, 0, 0]
        );
    }

    #[test]
    fn kv_span_for_smollm_two_ranks_replicates_the_split_group() {
        // 9 query heads in 3 groups, split 5 + 4: group 1 (heads 3..6) is split, so kv head 1
        // is held by both ranks.
        let q = even_spans(9, 2);
        assert_eq!(kv_span_for(q[0], 9, 3), Span::new(0, 2));
        assert_eq!(kv_span_for(q[1], 9, 3), Span::new(1, 3));
    }

    #[test]
    fn kv_span_for_aligned_split_has_no_replication() {
        let q = even_spans(32, 4);
        let kv: Vec<_> = q.iter().map(|s| kv_span_for(*s, 32, 8)).collect();
        assert_eq!(kv, even_spans(8, 4));
    }

    #[test]
    fn weighted_spans_follow_the_weights_and_cover_everything() {
        let s = weighted_spans(1536, &[80.0, 80.0, 40.0], 16);
        assert_eq!(s[0], Span::new(0, 608));
        assert_eq!(s[1], Span::new(608, 1216));
        assert_eq!(s[2], Span::new(1216, 1536));
    }

    proptest! {
        #[test]
        fn even_spans_partition_the_range(total in 0usize..5000, world in 1usize..17) {
            let s = even_spans(total, world);
            prop_assert_eq!(s.len(), world);
            prop_assert_eq!(s[0].start, 0);
            prop_assert_eq!(s[world - 1].end, total);
            for w in s.windows(2) {
                prop_assert_eq!(w[0].end, w[1].start);
                prop_assert!(w[0].len() >= w[1].len());
                prop_assert!(w[0].len() - w[1].len() <= 1);
            }
        }

        #[test]
        fn kv_span_covers_every_query_head(n_kv in 1usize..9, group in 1usize..6, world in 1usize..12) {
            let n_heads = n_kv * group;
            for q in even_spans(n_heads, world) {
                let kv = kv_span_for(q, n_heads, n_kv);
                for h in q.start..q.end {
                    prop_assert!(kv.contains(h / group));
                }
                prop_assert!(kv.len() <= q.len().div_ceil(group) + 1);
            }
        }
    }
}
