//! The human-readable form of a prediction: the slowest rank per layer type, then every rank.

use std::fmt::Write;

use crate::cost::{Cost, Prediction};

fn row(s: &mut String, name: &str, c: &Cost, per: f64) {
    let w = &c.work;
    let _ = writeln!(
        s,
        "{:<10} {:>10.3} {:>10.2} {:>9.2} {:>9.2} {:>10.1} {:>6} {:>10.3} {:>10.3} {:>9.3} {:>9.3}",
        name,
        w.flops as f64 / per / 1e9,
        w.weight_bytes as f64 / per / 1e6,
        w.kv_bytes as f64 / per / 1e6,
        w.activation_bytes as f64 / per / 1e6,
        c.comm_bytes as f64 / per / 1e3,
        c.collectives,
        c.compute_s / per * 1e3,
        c.memory_s / per * 1e3,
        c.comm_s / per * 1e3,
        c.time_s / per * 1e3,
    );
}

/// Renders `p` as text: the slowest rank per layer type (per step, then the total per
/// token), every rank's total, and the step time.
pub fn render_explain(p: &Prediction) -> String {
    let mut s = String::new();
    let w = &p.workload;
    let _ = writeln!(
        s,
        "cost: strategy {}, {} rank(s), hardware {}, {} batch {} context {}, {} B/weight, {} reduce",
        p.strategy,
        p.world,
        p.hardware.name,
        w.phase.name(),
        w.batch,
        w.context,
        w.weight_bytes,
        p.reduce.name()
    );
    let _ = writeln!(
        s,
        "rule: time = max(compute, memory) + comm per layer type; step = slowest rank; {} token row(s), {} logit row(s) per step",
        p.tokens, p.logit_rows
    );
    let Some(slow) = p.slowest_rank() else {
        return s;
    };
    let _ = writeln!(s, "\nslowest rank {} (per step):", slow.rank);
    let _ = writeln!(
        s,
        "{:<10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>6} {:>10} {:>10} {:>9} {:>9}",
        "layer",
        "GFLOP",
        "weight MB",
        "KV MB",
        "act MB",
        "comm KB",
        "calls",
        "compute ms",
        "memory ms",
        "comm ms",
        "time ms"
    );
    for l in &slow.layers {
        row(&mut s, l.layer_type.name(), &l.cost, 1.0);
    }
    row(&mut s, "total", &slow.total, 1.0);
    row(&mut s, "per token", &slow.total, p.tokens.max(1) as f64);
    let _ = writeln!(s, "\nevery rank (per step):");
    let _ = writeln!(
        s,
        "{:>4} {:>10} {:>10} {:>14} {:>9}",
        "rank", "GFLOP", "memory MB", "comm bytes", "time ms"
    );
    for r in &p.ranks {
        let _ = writeln!(
            s,
            "{:>4} {:>10.3} {:>10.2} {:>14} {:>9.3}",
            r.rank,
            r.total.work.flops as f64 / 1e9,
            r.total.work.memory_bytes() as f64 / 1e6,
            r.total.comm_bytes,
            r.total.time_s * 1e3
        );
    }
    let _ = writeln!(
        s,
        "\nstep {:.3} ms, {:.3} ms per token, {:.1} tokens/s, {:.1}% of the step in collectives",
        p.step_s * 1e3,
        p.per_token_s * 1e3,
        p.tokens_per_s,
        p.comm_share() * 100.0
    );
    s
}
