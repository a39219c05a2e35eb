//! The human-readable form of a plan: one row per rank, then the collectives.

use std::fmt::Write;

use crate::{Collective, CollectiveOp, CollectiveSite, ShardPlan};

/// Renders `plan` as a text table; `bytes_per_param` is the weight dtype's size (4 for f32).
pub fn render_table(plan: &ShardPlan, bytes_per_param: usize) -> String {
    let m = &plan.model;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "plan: strategy {}, {} rank(s); model: hidden {}, {} layers, {} heads / {} kv heads x {}, intermediate {}, vocab {}",
        plan.strategy, plan.world_size, m.hidden, m.layers, m.heads, m.kv_heads, m.head_dim,
        m.intermediate, m.vocab
    );
    let _ = writeln!(
        s,
        "{:>4}  {:>9}  {:>9}  {:>13}  {:>13}  {:>13}  {:>12}  {:>10}",
        "rank",
        "q heads",
        "kv heads",
        "intermediate",
        "embed vocab",
        "lm_head vocab",
        "parameters",
        "MiB"
    );
    for rank in 0..plan.world_size {
        // Layer 0 stands for all layers in the summary; per-layer differences show in --json.
        let heads = plan.heads(0, rank);
        let inter = plan
            .layers
            .first()
            .map(|l| l.mlp.span(rank, m.intermediate));
        let params = plan.rank_parameters(rank);
        let _ = writeln!(
            s,
            "{:>4}  {:>9}  {:>9}  {:>13}  {:>13}  {:>13}  {:>12}  {:>10.1}",
            rank,
            format!("{} ({})", heads.q_heads, heads.q_heads.len()),
            format!("{} ({})", heads.kv_heads, heads.kv_heads.len()),
            inter.map(|i| i.to_string()).unwrap_or_default(),
            plan.embedding.span(rank, m.vocab).to_string(),
            plan.lm_head.span(rank, m.vocab).to_string(),
            params,
            (params * bytes_per_param) as f64 / (1024.0 * 1024.0)
        );
    }
    let collectives = plan.collectives();
    let per_layer = collectives.iter().filter(in_layer_0).count();
    let count = |op: CollectiveOp| collectives.iter().filter(|c| c.op == op).count();
    let _ = writeln!(
        s,
        "collectives per step: {} all-reduce, {} reduce-scatter, {} all-gather ({per_layer} per layer){}",
        count(CollectiveOp::AllReduce),
        count(CollectiveOp::ReduceScatter),
        count(CollectiveOp::AllGather),
        if plan.sequence_parallel {
            "; token rows sharded between split layers"
        } else {
            ""
        }
    );
    let bytes = |c: &Collective| c.elems_per_token * crate::cost::COMM_ELEM_BYTES as usize;
    let layer_bytes: usize = collectives.iter().filter(in_layer_0).map(bytes).sum();
    let step_bytes: usize = collectives.iter().map(bytes).sum();
    let _ = writeln!(
        s,
        "collective bytes per token, each rank's contribution (f32): {layer_bytes} per layer, {step_bytes} per step"
    );
    s
}

/// Whether `c` runs inside layer 0 (which stands for every layer in the summary).
fn in_layer_0(c: &&Collective) -> bool {
    matches!(
        c.site,
        CollectiveSite::Attention { layer: 0 }
            | CollectiveSite::Mlp { layer: 0 }
            | CollectiveSite::Gather { layer: 0, .. }
    )
}
