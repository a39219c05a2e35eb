//! Deterministic reduction of row-parallel layers: the fixed chunk grid and what each rank
//! contributes.
//!
//! A row-parallel weight (`o_proj`, `down_proj`) is split along its reduction dimension.
//! Adding rank partial sums in rank order would still make the result depend on where the
//! cuts fall, so the reduction dimension is cut once, independently of the rank count, into
//! fixed chunks (one attention head; [`ModelShape::mlp_reduce_chunk`] MLP columns). Every
//! chunk is reduced on its own and the chunk sums are added left to right:
//!
//! ```text
//!   o_proj, 9 heads:  chunks  c0 c1 c2 c3 c4 | c5 c6 c7 c8
//!                     rank 0 folds c0..c4     rank 1 publishes c5, c6, c7, c8
//!   out = ((((fold(c0..c4) + c5) + c6) + c7) + c8)   == the one-rank fold, bit for bit
//! ```
//!
//! The first rank that holds chunks (its span starts at 0) folds them itself and publishes
//! one vector; every later rank publishes one vector per chunk. The communicator folds
//! what it receives in rank order.

use serde::{Deserialize, Serialize};

use crate::error::PlanError;
use crate::shape::ModelShape;
use crate::span::Span;
use crate::{DimSharding, ShardPlan};

/// How the partial sums of a row-parallel layer are combined across ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReduceMode {
    /// Fixed chunks folded in order: logits have the same bits at every rank count.
    #[default]
    Deterministic,
    /// One all-reduce of each rank's whole partial sum (`--fast-reduce`): fewer bytes, but
    /// the rounding depends on where the ranks' spans are cut.
    Fast,
}

impl ReduceMode {
    /// The mode's name as the command line and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Deterministic => "deterministic",
            Self::Fast => "fast",
        }
    }
}

impl ModelShape {
    /// Width in intermediate columns of the MLP's fixed reduction chunks: the largest of
    /// 128, 64, 32 that still gives at least 8 chunks, else 16. It depends on the model
    /// only, never on the rank count.
    pub fn mlp_reduce_chunk(&self) -> usize {
        [128, 64, 32]
            .into_iter()
            .find(|c| self.intermediate >= 8 * c)
            .unwrap_or(16)
    }

    /// Width in attention-output columns of the attention's reduction chunks (one head).
    pub fn attention_reduce_chunk(&self) -> usize {
        self.head_dim.max(1)
    }
}

/// Splits `total` into `world` contiguous spans of whole `unit`s, as evenly as possible
/// (earlier ranks take the extra units; the last unit may be short).
pub fn even_unit_spans(total: usize, unit: usize, world: usize) -> Vec<Span> {
    let unit = unit.max(1);
    let units = total.div_ceil(unit);
    crate::span::even_spans(units, world)
        .into_iter()
        .map(|s| Span::new((s.start * unit).min(total), (s.end * unit).min(total)))
        .collect()
}

/// Number of vectors a rank publishes at one row-parallel site under [`ReduceMode::Deterministic`]:
/// one if its span starts at 0 (it folds its own chunks), else one per chunk it holds.
pub fn published_vectors(span: Span, chunk: usize) -> usize {
    if span.is_empty() {
        0
    } else if span.start == 0 {
        1
    } else {
        span.len().div_ceil(chunk.max(1))
    }
}

impl ShardPlan {
    /// Checks that every split MLP cuts on the fixed reduction chunks, so
    /// [`ReduceMode::Deterministic`] can run it; the error names the layer and the rank.
    pub fn check_deterministic(&self) -> Result<(), PlanError> {
        let chunk = self.model.mlp_reduce_chunk();
        for (layer, lp) in self.layers.iter().enumerate() {
            if let DimSharding::Split { spans } = &lp.mlp {
                for (rank, s) in spans.iter().enumerate() {
                    if !s.is_empty() && !s.start.is_multiple_of(chunk) {
                        return Err(PlanError::ReduceChunk {
                            layer,
                            rank,
                            start: s.start,
                            chunk,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Strategy;

    #[test]
    fn unit_spans_cut_on_units_and_cover_everything() {
        for (total, unit, world) in [(1536, 128, 5), (384, 32, 7), (70, 16, 3), (5, 16, 2)] {
            let spans = even_unit_spans(total, unit, world);
            assert_eq!(spans.len(), world);
            let mut next = 0;
            for s in &spans {
                assert_eq!(s.start, next);
                assert!(s.start.is_multiple_of(unit) || s.start == total);
                next = s.end;
            }
            assert_eq!(next, total);
        }
        assert_eq!(
            even_unit_spans(1536, 128, 5),
            vec![
                Span::new(0, 384),
                Span::new(384, 768),
                Span::new(768, 1024),
                Span::new(1024, 1280),
                Span::new(1280, 1536)
            ]
        );
    }

    #[test]
    fn mlp_chunks_depend_on_the_model_only() {
        assert_eq!(ModelShape::smollm2_135m().mlp_reduce_chunk(), 128);
        assert_eq!(ModelShape::llama3_8b().mlp_reduce_chunk(), 128);
        let mut tiny = ModelShape::smollm2_135m();
        tiny.intermediate = 384;
        assert_eq!(tiny.mlp_reduce_chunk(), 32);
        tiny.intermediate = 40;
        assert_eq!(tiny.mlp_reduce_chunk(), 16);
    }

    #[test]
    fn strategies_cut_on_chunks_and_a_hand_cut_elsewhere_is_named() {
        let shape = ModelShape::smollm2_135m();
        for world in 1..=8 {
            for s in Strategy::ALL {
                s.plan(&shape, world)
                    .unwrap()
                    .check_deterministic()
                    .unwrap();
            }
        }
        let mut plan = Strategy::Megatron.plan(&shape, 2).unwrap();
        plan.layers[3].mlp = DimSharding::Split {
            spans: vec![Span::new(0, 700), Span::new(700, 1536)],
        };
        let err = plan.check_deterministic().unwrap_err().to_string();
        assert!(
            err.contains("layers.3") && err.contains("rank 1") && err.contains("700"),
            "{err}"
        );
        assert!(err.contains("--fast-reduce"), "{err}");
    }

    #[test]
    fn the_first_holder_folds_and_later_ranks_publish_each_chunk() {
        assert_eq!(published_vectors(Span::new(0, 5), 1), 1);
        assert_eq!(published_vectors(Span::new(5, 9), 1), 4);
        assert_eq!(published_vectors(Span::new(640, 896), 128), 2);
        assert_eq!(published_vectors(Span::new(1152, 1500), 128), 3);
        assert_eq!(published_vectors(Span::new(3, 3), 1), 0);
    }
}
