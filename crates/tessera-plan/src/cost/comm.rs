//! Bytes each rank publishes at every collective of a step: the quantity the communicator
//! counts as `bytes_moved` (what a rank writes into shared memory or sends), predicted from
//! the plan alone.
//!
//! Row-parallel sites (attention output projection, MLP down projection) reduce partial sums;
//! how many bytes a rank publishes there depends on the reduction algorithm:
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
//! A split embedding is an all-reduce of hidden f32 per token (both modes); a split output
//! head gathers `logit_rows x vocab_span_r` f32 from rank r. A sequence-parallel plan
//! (`megatron-sp`) turns each row-parallel all-reduce into a reduce-scatter (same bytes)
//! followed by an all-gather of the rank's `even_spans(tokens, world)` rows.

use serde::{Deserialize, Serialize};

use crate::plan::{AttentionSharding, CollectiveSite, DimSharding, ShardPlan};
use crate::shape::ModelShape;
use crate::span::{even_spans, Span};

/// Bytes of one communicated element: the communicator moves f32.
pub const COMM_ELEM_BYTES: u64 = 4;

/// Intermediate columns summed as one chunk in deterministic mode: the largest of 128, 64,
/// 32 that still gives at least 8 chunks, else 16 (a property of the model, never of the
/// rank count; the same rule as the deterministic reduction's `mlp_reduce_chunk`).
pub fn mlp_reduce_chunk(shape: &ModelShape) -> usize {
    [128, 64, 32]
        .into_iter()
        .find(|c| shape.intermediate >= 8 * c)
        .unwrap_or(16)
}

/// Strategy name of sequence-parallel plans (see [`is_sequence_parallel`]).
pub const SEQUENCE_PARALLEL_STRATEGY: &str = "megatron-sp";

/// How row-parallel partial sums are reduced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceMode {
    /// Fixed chunks summed in one order: logits bit-identical at every rank count (default).
    #[default]
    Deterministic,
    /// A plain all-reduce of each rank's partial sum (`--fast-reduce`).
    Fast,
}

impl ReduceMode {
    /// The mode's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deterministic => "deterministic",
            Self::Fast => "fast",
        }
    }
}

/// What a collective call does, as far as traffic is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficOp {
    /// Sum of partial results, whole result on every rank.
    AllReduce,
    /// Sum of partial results, each rank keeps its rows (sequence parallel).
    ReduceScatter,
    /// Concatenation of every rank's slice on every rank.
    AllGather,
}

/// The bytes every rank publishes at one collective call of a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTraffic {
    /// Where in the forward pass the call runs.
    pub site: CollectiveSite,
    /// What it does.
    pub op: TrafficOp,
    /// Bytes published by each rank, in rank order.
    pub bytes_per_rank: Vec<u64>,
}

impl SiteTraffic {
    /// Bytes all ranks publish together (what every rank reads, its own included).
    pub fn total_bytes(&self) -> u64 {
        self.bytes_per_rank.iter().sum()
    }
}

/// True when the plan is sequence parallel: the one place that decides it.
pub fn is_sequence_parallel(plan: &ShardPlan) -> bool {
    plan.strategy == SEQUENCE_PARALLEL_STRATEGY
}

/// The span `rank` reduces at a row-parallel `site` and the chunk width on it (query heads
/// and 1; intermediate columns and [`mlp_reduce_chunk`]); `None` at other sites and for
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
                mlp_reduce_chunk(&plan.model),
            )),
            _ => None,
        },
        CollectiveSite::Embedding | CollectiveSite::LmHead => None,
    }
}

/// Reduction chunks `rank` holds at a row-parallel `site` (0 for other sites).
pub fn reduction_chunks(plan: &ShardPlan, site: CollectiveSite, rank: usize) -> usize {
    reduction_span(plan, site, rank).map_or(0, |(span, chunk)| span.len().div_ceil(chunk))
}

/// Vectors of `hidden` f32 per token `rank` publishes at a row-parallel `site` in
/// deterministic mode: 1 for the rank whose span starts at 0 (it folds its own chunks),
/// one per chunk for the others, 0 for an empty span.
pub fn published_vectors(plan: &ShardPlan, site: CollectiveSite, rank: usize) -> usize {
    match reduction_span(plan, site, rank) {
        Some((span, _)) if span.is_empty() => 0,
        Some((span, _)) if span.start == 0 => 1,
        Some(_) => reduction_chunks(plan, site, rank),
        None => 0,
    }
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
        ReduceMode::Deterministic => row * published_vectors(plan, site, rank) as u64,
    }
}

/// Every collective call of one step over `tokens` rows with `logit_rows` rows of logits,
/// in execution order, with the bytes each rank publishes.
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
    let ranks = 0..world;
    if plan.embedding.is_split() {
        out.push(SiteTraffic {
            site: CollectiveSite::Embedding,
            op: TrafficOp::AllReduce,
            bytes_per_rank: vec![hidden_bytes * t; world],
        });
    }
    let sp = is_sequence_parallel(plan);
    let sp_rows: Vec<u64> = even_spans(tokens, world)
        .iter()
        .map(|s| s.len() as u64 * hidden_bytes)
        .collect();
    let row_parallel = |site: CollectiveSite, out: &mut Vec<SiteTraffic>| {
        let reduced = ranks
            .clone()
            .map(|r| reduce_bytes(plan, reduce, site, r, t))
            .collect();
        if sp {
            out.push(SiteTraffic {
                site,
                op: TrafficOp::ReduceScatter,
                bytes_per_rank: reduced,
            });
            out.push(SiteTraffic {
                site,
                op: TrafficOp::AllGather,
                bytes_per_rank: sp_rows.clone(),
            });
        } else {
            out.push(SiteTraffic {
                site,
                op: TrafficOp::AllReduce,
                bytes_per_rank: reduced,
            });
        }
    };
    for (layer, lp) in plan.layers.iter().enumerate() {
        if matches!(lp.attention, AttentionSharding::Heads { .. }) {
            row_parallel(CollectiveSite::Attention { layer }, &mut out);
        }
        if lp.mlp.is_split() {
            row_parallel(CollectiveSite::Mlp { layer }, &mut out);
        }
    }
    if plan.lm_head.is_split() && logit_rows > 0 {
        out.push(SiteTraffic {
            site: CollectiveSite::LmHead,
            op: TrafficOp::AllGather,
            bytes_per_rank: ranks
                .map(|r| {
                    logit_rows as u64 * plan.lm_head.span(r, m.vocab).len() as u64 * COMM_ELEM_BYTES
                })
                .collect(),
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
    fn mlp_chunk_width_depends_on_the_model_only() {
        assert_eq!(mlp_reduce_chunk(&ModelShape::smollm2_135m()), 128);
        assert_eq!(mlp_reduce_chunk(&ModelShape::llama3_8b()), 128);
        let mut tiny = ModelShape::smollm2_135m();
        tiny.intermediate = 384;
        assert_eq!(mlp_reduce_chunk(&tiny), 32);
        tiny.intermediate = 40;
        assert_eq!(mlp_reduce_chunk(&tiny), 16);
    }

    #[test]
    fn later_ranks_publish_one_vector_per_chunk_they_hold() {
        // Llama-3-8B MLP on 3 ranks: 4779 + 4779 + 4778 columns; ranks 1 and 2 hold
        // ceil(4779 / 128) = 38 and 38 chunks.
        let p = plan(Strategy::Megatron, &ModelShape::llama3_8b(), 3);
        let site = CollectiveSite::Mlp { layer: 5 };
        let v: Vec<_> = (0..3).map(|r| published_vectors(&p, site, r)).collect();
        assert_eq!(v, vec![1, 38, 38]);
        assert_eq!(reduction_chunks(&p, site, 0), 38);
        let site = CollectiveSite::Attention { layer: 0 };
        let v: Vec<_> = (0..3).map(|r| published_vectors(&p, site, r)).collect();
        assert_eq!(v, vec![1, 11, 10]);
    }

    #[test]
    fn sequence_parallel_adds_a_gather_of_each_ranks_rows() {
        let shape = ModelShape::smollm2_135m();
        let mut p = plan(Strategy::Megatron, &shape, 3);
        p.strategy = SEQUENCE_PARALLEL_STRATEGY.into();
        let traffic = collective_traffic(&p, ReduceMode::Deterministic, 7, 1);
        let at0: Vec<_> = traffic
            .iter()
            .filter(|s| s.site == CollectiveSite::Attention { layer: 0 })
            .collect();
        assert_eq!(at0.len(), 2);
        assert_eq!(at0[0].op, TrafficOp::ReduceScatter);
        assert_eq!(at0[0].bytes_per_rank[1], 3 * 576 * 4 * 7);
        assert_eq!(at0[1].op, TrafficOp::AllGather);
        // 7 rows on 3 ranks: 3 + 2 + 2.
        assert_eq!(at0[1].bytes_per_rank, vec![3 * 2304, 2 * 2304, 2 * 2304]);
    }

    #[test]
    fn mlp_only_plan_has_no_attention_traffic() {
        let p = plan(Strategy::MlpTpAttnReplicated, &ModelShape::llama3_8b(), 4);
        let traffic = collective_traffic(&p, ReduceMode::Fast, 2, 2);
        assert_eq!(traffic.len(), 32);
        assert!(traffic
            .iter()
            .all(|s| matches!(s.site, CollectiveSite::Mlp { .. })));
    }
}
