//! Bytes each rank publishes at every collective of a step: the quantity the communicator
//! counts as `bytes_moved` (what a rank writes into shared memory), predicted from the plan.
//!
//! Row-parallel sites (attention output projection, MLP down projection) reduce partial sums;
//! how many bytes a rank publishes there depends on the reduction ([`ReduceMode`]):
//!
//! ```text
//!   fast (plain all-reduce)        every rank publishes hidden f32 per token
//!   deterministic (fixed chunks)   the rank whose span starts at 0 folds its own chunks:
//!                                    1 x hidden per token
//!                                  every other rank: chunks_r x hidden per token
//!                                  a rank with an empty span: nothing
//!     chunks_r, attention: query heads of rank r (one chunk per head)
//!     chunks_r, MLP: span_r.len().div_ceil(mlp_reduce_chunk) intermediate columns
//! ```
//!
//! A split embedding publishes hidden f32 per token (both modes); a split output head
//! gathers `logit_rows x vocab_span_r` f32 from rank r. A sequence-parallel plan
//! (`megatron-sp`) reduce-scatters instead (same bytes as the all-reduce it replaces),
//! gathers each rank's `even_spans(tokens, world)` rows of hidden f32 before every split
//! half, and gathers the rows that need logits (those in the rank's rows) before the head.

use serde::{Deserialize, Serialize};

use crate::reduce::{published_vectors, ReduceMode};
use crate::span::{even_spans, Span};
use crate::{AttentionSharding, CollectiveOp, CollectiveSite, DimSharding, ShardPlan};

/// Bytes of one communicated element: the communicator moves f32.
pub const COMM_ELEM_BYTES: u64 = 4;

/// The bytes every rank publishes at one collective call of a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTraffic {
    /// Where in the forward pass the call runs.
    pub site: CollectiveSite,
    /// What it does.
    pub op: CollectiveOp,
    /// Bytes published by each rank, in rank order.
    pub bytes_per_rank: Vec<u64>,
}

impl SiteTraffic {
    /// Bytes all ranks publish together (what every rank reads, its own included).
    pub fn total_bytes(&self) -> u64 {
        self.bytes_per_rank.iter().sum()
    }
}

/// The span `rank` reduces at a row-parallel `site` and the chunk width on it (query heads
/// and 1; intermediate columns and the model's MLP chunk); `None` at other sites and for
/// replicated halves.
fn reduction_span(plan: &ShardPlan, site: CollectiveSite, rank: usize) -> Option<(Span, usize)> {
    let empty = Span::new(0, 0);
    match site {
        CollectiveSite::Attention { layer } => match plan.layers.get(layer).map(|l| &l.attention) {
            Some(AttentionSharding::Heads { ranks }) => {
                Some((ranks.get(rank).map_or(empty, |h| h.q_heads), 1))
            }
            _ => None,
        },
        CollectiveSite::Mlp { layer } => match plan.layers.get(layer).map(|l| &l.mlp) {
            Some(DimSharding::Split { spans }) => Some((
                spans.get(rank).copied().unwrap_or(empty),
                plan.model.mlp_reduce_chunk(),
            )),
            _ => None,
        },
        _ => None,
    }
}

/// Reduction chunks `rank` holds at a row-parallel `site` (0 for other sites).
pub fn reduction_chunks(plan: &ShardPlan, site: CollectiveSite, rank: usize) -> usize {
    reduction_span(plan, site, rank).map_or(0, |(span, chunk)| span.len().div_ceil(chunk))
}

/// Vectors of `hidden` f32 per token `rank` publishes at a row-parallel `site` in
/// deterministic mode ([`published_vectors`] of its span; 0 at other sites).
pub fn site_published_vectors(plan: &ShardPlan, site: CollectiveSite, rank: usize) -> usize {
    reduction_span(plan, site, rank).map_or(0, |(span, chunk)| published_vectors(span, chunk))
}

/// Bytes `rank` publishes reducing partial sums of `tokens` rows at a row-parallel site.
fn reduce_bytes(
    plan: &ShardPlan,
    reduce: ReduceMode,
    site: CollectiveSite,
    rank: usize,
    tokens: u64,
) -> u64 {
    let row = plan.model.hidden as u64 * COMM_ELEM_BYTES * tokens;
    match reduce {
        ReduceMode::Fast => row,
        ReduceMode::Deterministic => row * site_published_vectors(plan, site, rank) as u64,
    }
}

/// Token rows that need logits when `logit_rows` sequences of equal length share `tokens`
/// rows: the last row of each (all rows when `logit_rows == tokens`).
fn logit_row_indices(tokens: usize, logit_rows: usize) -> impl Iterator<Item = usize> {
    (0..logit_rows.min(tokens)).map(move |i| (i + 1) * tokens / logit_rows - 1)
}

/// Every collective call of one step over `tokens` rows with `logit_rows` rows of logits
/// (the last row of each of `logit_rows` equal-length sequences), in execution order, with
/// the bytes each rank publishes.
pub fn collective_traffic(
    plan: &ShardPlan,
    reduce: ReduceMode,
    tokens: usize,
    logit_rows: usize,
) -> Vec<SiteTraffic> {
    let world = plan.world_size;
    let mut out = Vec::new();
    if world <= 1 || tokens == 0 {
        return out;
    }
    let m = &plan.model;
    let t = tokens as u64;
    let hidden_bytes = m.hidden as u64 * COMM_ELEM_BYTES;
    let rows = even_spans(tokens, world);
    let row_bytes: Vec<u64> = rows.iter().map(|s| s.len() as u64 * hidden_bytes).collect();
    let reduced = |site| {
        (0..world)
            .map(|r| reduce_bytes(plan, reduce, site, r, t))
            .collect()
    };
    // The plan's own list of collectives, each priced for this step.
    for c in plan.collectives() {
        let bytes_per_rank = match c.site {
            CollectiveSite::Embedding => vec![hidden_bytes * t; world],
            CollectiveSite::Attention { .. } | CollectiveSite::Mlp { .. } => reduced(c.site),
            CollectiveSite::Gather { .. } => row_bytes.clone(),
            // The rows that need logits, gathered from the ranks that hold them.
            CollectiveSite::FinalRows if logit_rows > 0 => {
                let mut picked = vec![0u64; world];
                for row in logit_row_indices(tokens, logit_rows) {
                    if let Some(r) = rows.iter().position(|s| s.contains(row)) {
                        picked[r] += hidden_bytes;
                    }
                }
                picked
            }
            CollectiveSite::LmHead if logit_rows > 0 => (0..world)
                .map(|r| {
                    logit_rows as u64 * plan.lm_head.span(r, m.vocab).len() as u64 * COMM_ELEM_BYTES
                })
                .collect(),
            CollectiveSite::FinalRows | CollectiveSite::LmHead => continue,
        };
        out.push(SiteTraffic {
            site: c.site,
            op: c.op,
            bytes_per_rank,
        });
    }
    out
}

/// Bytes each rank publishes in one step: the sum of [`collective_traffic`] per rank, the
/// number the communicator reports as `bytes_moved` for that step.
pub fn collective_bytes_per_rank(
    plan: &ShardPlan,
    reduce: ReduceMode,
    tokens: usize,
    logit_rows: usize,
) -> Vec<u64> {
    let mut per_rank = vec![0u64; plan.world_size];
    for site in collective_traffic(plan, reduce, tokens, logit_rows) {
        for (acc, b) in per_rank.iter_mut().zip(&site.bytes_per_rank) {
            *acc += b;
        }
    }
    per_rank
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelShape, Strategy};

    fn plan(strategy: Strategy, shape: &ModelShape, world: usize) -> ShardPlan {
        strategy.plan(shape, world).expect("valid plan")
    }

    #[test]
    fn world_of_one_publishes_nothing() {
        for s in [Strategy::Megatron, Strategy::Replicated] {
            let p = plan(s, &ModelShape::smollm2_135m(), 1);
            assert!(collective_traffic(&p, ReduceMode::Deterministic, 8, 8).is_empty());
            assert_eq!(
                collective_bytes_per_rank(&p, ReduceMode::Fast, 8, 8),
                vec![0]
            );
        }
    }

    #[test]
    fn replicated_plan_publishes_nothing_at_any_world() {
        let p = plan(Strategy::Replicated, &ModelShape::llama3_8b(), 4);
        assert_eq!(
            collective_bytes_per_rank(&p, ReduceMode::Deterministic, 16, 4),
            vec![0; 4]
        );
    }

    #[test]
    fn fast_megatron_two_ranks_smollm_matches_hand_count() {
        // Per token: embedding + 30 x (attention + MLP) all-reduces of 576 f32, then the
        // logits of the rank's vocabulary half (24576 f32) for one row.
        let p = plan(Strategy::Megatron, &ModelShape::smollm2_135m(), 2);
        let b = collective_bytes_per_rank(&p, ReduceMode::Fast, 1, 1);
        let expect = (61 * 576 + 24576) * 4;
        assert_eq!(b, vec![expect, expect]);
    }

    #[test]
    fn deterministic_megatron_two_ranks_smollm_counts_chunks() {
        // Rank 0 folds its own chunks: one vector per site. Rank 1: 4 heads -> 4 vectors at
        // attention; MLP span 768..1536 = 6 chunks of 128 -> 6 vectors.
        let p = plan(Strategy::Megatron, &ModelShape::smollm2_135m(), 2);
        let t = 3u64;
        let b = collective_bytes_per_rank(&p, ReduceMode::Deterministic, 3, 2);
        let row = 576 * 4 * t;
        let logits = 2 * 24576 * 4;
        assert_eq!(b[0], row + 30 * (row + row) + logits);
        assert_eq!(b[1], row + 30 * (4 * row + 6 * row) + logits);
    }

    #[test]
    fn deterministic_first_holder_folds_even_when_it_is_not_rank_0() {
        // A hand-made plan in which rank 0 holds no query head: rank 1 starts at head 0, so
        // it folds all nine heads itself and publishes one vector.
        let shape = ModelShape::smollm2_135m();
        let mut p = plan(Strategy::AttnTpMlpReplicated, &shape, 2);
        for lp in &mut p.layers {
            if let AttentionSharding::Heads { ranks } = &mut lp.attention {
                ranks[0].q_heads = Span::new(0, 0);
                ranks[0].kv_heads = Span::new(0, 0);
                ranks[1].q_heads = Span::new(0, 9);
                ranks[1].kv_heads = Span::new(0, 3);
            }
        }
        p.validate().expect("rank 0 may hold no head");
        let b = collective_bytes_per_rank(&p, ReduceMode::Deterministic, 1, 1);
        assert_eq!(b, vec![0, 30 * 576 * 4]);
    }

    #[test]
    fn later_ranks_publish_one_vector_per_chunk_they_hold() {
        // Llama-3-8B MLP on 3 ranks: 112 chunks of 128 columns split 38 + 37 + 37; rank 0
        // folds its 38 and publishes one vector.
        let p = plan(Strategy::Megatron, &ModelShape::llama3_8b(), 3);
        let site = CollectiveSite::Mlp { layer: 5 };
        let v: Vec<_> = (0..3)
            .map(|r| site_published_vectors(&p, site, r))
            .collect();
        assert_eq!(v, vec![1, 37, 37]);
        assert_eq!(reduction_chunks(&p, site, 0), 38);
        let site = CollectiveSite::Attention { layer: 0 };
        let v: Vec<_> = (0..3)
            .map(|r| site_published_vectors(&p, site, r))
            .collect();
        assert_eq!(v, vec![1, 11, 10]);
    }

    #[test]
    fn sequence_parallel_gathers_each_ranks_rows_around_every_reduce_scatter() {
        let shape = ModelShape::smollm2_135m();
        let p = plan(Strategy::MegatronSp, &shape, 3);
        assert!(p.sequence_parallel);
        // 2 sequences of 7 tokens: rows 6 and 13 need logits; 14 rows on 3 ranks: 5 + 5 + 4.
        let traffic = collective_traffic(&p, ReduceMode::Deterministic, 14, 2);
        let row = 576 * 4;
        let layer0: Vec<_> = traffic
            .iter()
            .filter(|s| match s.site {
                CollectiveSite::Attention { layer }
                | CollectiveSite::Mlp { layer }
                | CollectiveSite::Gather { layer, .. } => layer == 0,
                _ => false,
            })
            .collect();
        let ops: Vec<_> = layer0.iter().map(|s| s.op).collect();
        use CollectiveOp::{AllGather, ReduceScatter};
        assert_eq!(
            ops,
            vec![AllGather, ReduceScatter, AllGather, ReduceScatter]
        );
        assert_eq!(layer0[0].bytes_per_rank, vec![5 * row, 5 * row, 4 * row]);
        // 9 heads on 3 ranks: 3 each; rank 0 folds, ranks 1 and 2 publish 3 vectors.
        assert_eq!(
            layer0[1].bytes_per_rank,
            vec![14 * row, 3 * 14 * row, 3 * 14 * row]
        );
        let final_rows = traffic
            .iter()
            .find(|s| s.site == CollectiveSite::FinalRows)
            .expect("final rows gathered");
        // Row 6 is rank 1's (rows 5..10), row 13 rank 2's (10..14).
        assert_eq!(final_rows.bytes_per_rank, vec![0, row, row]);
        assert_eq!(traffic.last().map(|s| s.site), Some(CollectiveSite::LmHead));
    }

    #[test]
    fn mlp_only_plan_has_no_attention_traffic() {
        let p = plan(Strategy::MlpTpAttnReplicated, &ModelShape::llama3_8b(), 4);
        let traffic = collective_traffic(&p, ReduceMode::Fast, 2, 2);
        assert!(traffic.iter().all(|s| s.op == CollectiveOp::AllReduce));
        assert_eq!(traffic.len(), 32);
        assert!(traffic
            .iter()
            .all(|s| matches!(s.site, CollectiveSite::Mlp { .. })));
    }
}
