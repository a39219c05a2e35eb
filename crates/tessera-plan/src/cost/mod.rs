//! The cost model: for a plan, a workload and a hardware profile, the FLOPs, bytes and
//! collective traffic of every rank in one step, and the time they take.
//!
//! Time rule, per rank and layer type (a roofline with communication added, not overlapped):
//!
//! ```text
//!   compute = FLOPs / flops_per_s            (rates divided by the rank count when the
//!   memory  = bytes / memory_bytes_per_s      ranks share one machine: cpu-here)
//!   comm    = sum over its collective calls of
//!             collective_latency_s + (bytes all ranks publish) / link_bytes_per_s
//!   time    = max(compute, memory) + comm
//! ```
//!
//! A collective's bytes are those every rank publishes (each rank writes its own and reads
//! everybody's); the published bytes themselves are exactly the communicator's
//! `bytes_moved` ([`collective_bytes_per_rank`]). A step takes as long as its slowest rank
//! (collectives make ranks wait for each other).

mod comm;
mod error;
mod render;
mod work;

use serde::{Deserialize, Serialize};

pub use crate::reduce::ReduceMode;
pub use comm::{
    collective_bytes_per_rank, collective_traffic, reduction_chunks, site_published_vectors,
    SiteTraffic, COMM_ELEM_BYTES,
};
pub use error::CostError;
pub use render::render_explain;
pub use work::{rank_work, LayerType, Phase, Work, Workload};

pub use crate::hardware::HardwareProfile;
use crate::{CollectiveSite, LayerHalf, ShardPlan};

/// Predicted cost of some work on one rank: what it does and how long it takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// FLOPs and memory bytes.
    pub work: Work,
    /// Bytes this rank publishes in collectives.
    pub comm_bytes: u64,
    /// Collective calls.
    pub collectives: u64,
    /// Seconds at the FLOP rate.
    pub compute_s: f64,
    /// Seconds at the memory bandwidth.
    pub memory_s: f64,
    /// Seconds in collectives.
    pub comm_s: f64,
    /// `max(compute_s, memory_s) + comm_s`.
    pub time_s: f64,
}

impl Cost {
    fn add(&self, o: &Cost) -> Cost {
        Cost {
            work: self.work.add(&o.work),
            comm_bytes: self.comm_bytes + o.comm_bytes,
            collectives: self.collectives + o.collectives,
            compute_s: self.compute_s + o.compute_s,
            memory_s: self.memory_s + o.memory_s,
            comm_s: self.comm_s + o.comm_s,
            time_s: self.time_s + o.time_s,
        }
    }
}

/// The cost of one layer type on one rank.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerCost {
    /// Which layer type.
    pub layer_type: LayerType,
    /// Its cost.
    #[serde(flatten)]
    pub cost: Cost,
}

/// The cost of one step on one rank, per layer type and in total.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankCost {
    /// The rank.
    pub rank: usize,
    /// One entry per layer type, in forward order.
    pub layers: Vec<LayerCost>,
    /// Sum over layer types.
    pub total: Cost,
}

/// The prediction for one step of a workload under a plan on a hardware profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The plan's strategy name.
    pub strategy: String,
    /// Ranks.
    pub world: usize,
    /// The hardware profile used.
    pub hardware: HardwareProfile,
    /// The workload.
    pub workload: Workload,
    /// The reduction algorithm assumed at row-parallel sites.
    pub reduce: ReduceMode,
    /// Token rows computed in the step.
    pub tokens: usize,
    /// Rows of logits in the step.
    pub logit_rows: usize,
    /// Per rank, per layer type.
    pub ranks: Vec<RankCost>,
    /// Every collective call of the step with the bytes each rank publishes.
    pub collectives: Vec<SiteTraffic>,
    /// Bytes each rank publishes in the step (the communicator's `bytes_moved`).
    pub comm_bytes_per_rank: Vec<u64>,
    /// Time of the step: the slowest rank's.
    pub step_s: f64,
    /// `step_s / tokens`.
    pub per_token_s: f64,
    /// `tokens / step_s`.
    pub tokens_per_s: f64,
}

impl Prediction {
    /// The rank whose step takes longest (the critical path).
    pub fn slowest_rank(&self) -> Option<&RankCost> {
        self.ranks
            .iter()
            .max_by(|a, b| a.total.time_s.total_cmp(&b.total.time_s))
    }

    /// Share of the step the slowest rank spends in collectives.
    pub fn comm_share(&self) -> f64 {
        match self.slowest_rank() {
            Some(r) if r.total.time_s > 0.0 => r.total.comm_s / r.total.time_s,
            _ => 0.0,
        }
    }
}

fn site_layer_type(site: CollectiveSite) -> LayerType {
    match site {
        CollectiveSite::Embedding => LayerType::Embedding,
        CollectiveSite::Attention { .. }
        | CollectiveSite::Gather {
            half: LayerHalf::Attention,
            ..
        } => LayerType::Attention,
        CollectiveSite::Mlp { .. }
        | CollectiveSite::Gather {
            half: LayerHalf::Mlp,
            ..
        } => LayerType::Mlp,
        CollectiveSite::FinalRows | CollectiveSite::LmHead => LayerType::LmHead,
    }
}

/// Predicts one step of `workload` under `plan` on `hardware`, with `reduce` at row-parallel sites.
pub fn predict(
    plan: &ShardPlan,
    hardware: &HardwareProfile,
    workload: &Workload,
    reduce: ReduceMode,
) -> Result<Prediction, CostError> {
    hardware.validate()?;
    workload.validate()?;
    let world = plan.world_size;
    let tokens = workload.tokens();
    let logit_rows = workload.logit_rows();
    let collectives = collective_traffic(plan, reduce, tokens, logit_rows);
    let (flops_rate, mem_rate) = hardware.per_rank_rates(world);
    let ranks: Vec<RankCost> = (0..world)
        .map(|rank| {
            let layers: Vec<LayerCost> = LayerType::ALL
                .iter()
                .map(|&lt| {
                    let work = rank_work(plan, rank, lt, workload);
                    let mut cost = Cost {
                        work,
                        compute_s: work.flops as f64 / flops_rate,
                        memory_s: work.memory_bytes() as f64 / mem_rate,
                        ..Cost::default()
                    };
                    for site in collectives.iter().filter(|s| site_layer_type(s.site) == lt) {
                        cost.comm_bytes += site.bytes_per_rank.get(rank).copied().unwrap_or(0);
                        cost.collectives += 1;
                        cost.comm_s += hardware.collective_latency_s
                            + site.total_bytes() as f64 / hardware.link_bytes_per_s;
                    }
                    cost.time_s = cost.compute_s.max(cost.memory_s) + cost.comm_s;
                    LayerCost {
                        layer_type: lt,
                        cost,
                    }
                })
                .collect();
            let total = layers
                .iter()
                .fold(Cost::default(), |acc, l| acc.add(&l.cost));
            RankCost {
                rank,
                layers,
                total,
            }
        })
        .collect();
    let step_s = ranks.iter().map(|r| r.total.time_s).fold(0.0f64, f64::max);
    let comm_bytes_per_rank = ranks.iter().map(|r| r.total.comm_bytes).collect();
    Ok(Prediction {
        strategy: plan.strategy.clone(),
        world,
        hardware: hardware.clone(),
        workload: *workload,
        reduce,
        tokens,
        logit_rows,
        ranks,
        collectives,
        comm_bytes_per_rank,
        step_s,
        per_token_s: step_s / tokens as f64,
        tokens_per_s: if step_s > 0.0 {
            tokens as f64 / step_s
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests;
