//! Cost model tests: every strategy, 1..8 ranks, SmolLM2 and Llama-3-8B shapes.

use super::*;
use crate::AttentionSharding;
use crate::{ModelShape, Strategy, WeightKind};

fn shapes() -> [ModelShape; 2] {
    [ModelShape::smollm2_135m(), ModelShape::llama3_8b()]
}

fn workloads() -> [Workload; 3] {
    [
        Workload::new(Phase::Decode, 1, 512, 4),
        Workload::new(Phase::Decode, 16, 100, 2),
        Workload::new(Phase::Prefill, 2, 64, 4),
    ]
}

/// Every (strategy, shape, world 1..8) plan.
fn all_plans() -> Vec<ShardPlan> {
    let mut out = Vec::new();
    for name in Strategy::NAMES {
        let strategy = Strategy::parse(name).expect("listed name parses");
        for shape in shapes() {
            for world in 1..=8 {
                out.push(strategy.plan(&shape, world).expect("valid plan"));
            }
        }
    }
    out
}

fn sum_over_ranks(p: &Prediction, lt: LayerType) -> Work {
    p.ranks.iter().fold(Work::default(), |acc, r| {
        let l = r
            .layers
            .iter()
            .find(|l| l.layer_type == lt)
            .expect("every layer type");
        acc.add(&l.cost.work)
    })
}

fn layer(p: &Prediction, rank: usize, lt: LayerType) -> Cost {
    p.ranks[rank]
        .layers
        .iter()
        .find(|l| l.layer_type == lt)
        .expect("every layer type")
        .cost
}

#[test]
fn flops_summed_over_ranks_equal_one_rank_plus_replicated_work() {
    let hw = HardwareProfile::cpu_here();
    for plan in all_plans() {
        let m = plan.model.clone();
        let one = Strategy::Replicated.plan(&m, 1).expect("tp1");
        for w in workloads() {
            let p = predict(&plan, &hw, &w, ReduceMode::Deterministic).expect("predicts");
            let p1 = predict(&one, &hw, &w, ReduceMode::Deterministic).expect("predicts");
            let world = plan.world_size as u64;
            let t = w.tokens() as u64;
            let what = format!("{} x{} {:?}", plan.strategy, world, w.phase);
            // Attention: split by heads, each rank's key/value projections include the
            // key/value heads it replicates (4 t hidden head_dim FLOPs per extra head).
            let attn = sum_over_ranks(&p, LayerType::Attention).flops;
            let attn1 = layer(&p1, 0, LayerType::Attention).work.flops;
            let expect = match &plan.layers[0].attention {
                AttentionSharding::Replicated => world * attn1,
                AttentionSharding::Heads { ranks } => {
                    let kv_held: usize = ranks.iter().map(|h| h.kv_heads.len()).sum();
                    let extra = (kv_held - m.kv_heads) as u64;
                    attn1 + extra * 4 * t * (m.hidden * m.head_dim) as u64 * m.layers as u64
                }
            };
            assert_eq!(attn, expect, "attention FLOPs, {what}");
            let mlp = sum_over_ranks(&p, LayerType::Mlp).flops;
            let mlp1 = layer(&p1, 0, LayerType::Mlp).work.flops;
            let factor = if plan.layers[0].mlp.is_split() {
                1
            } else {
                world
            };
            assert_eq!(mlp, factor * mlp1, "MLP FLOPs, {what}");
            let head = sum_over_ranks(&p, LayerType::LmHead).flops;
            let head1 = layer(&p1, 0, LayerType::LmHead).work.flops;
            let factor = if plan.lm_head.is_split() { 1 } else { world };
            assert_eq!(head, factor * head1, "lm_head FLOPs, {what}");
        }
    }
}

#[test]
fn weight_bytes_read_per_rank_equal_the_parameters_it_holds() {
    // Every weight is read once per step, except the embedding matrix (only looked-up rows);
    // a tied head shares its rows with the embedding.
    let hw = HardwareProfile::h200_nvlink();
    let w = Workload::new(Phase::Decode, 1, 10, 2);
    for plan in all_plans() {
        let p = predict(&plan, &hw, &w, ReduceMode::Fast).expect("predicts");
        let m = &plan.model;
        for rank in 0..plan.world_size {
            let read: u64 = [LayerType::Attention, LayerType::Mlp, LayerType::LmHead]
                .iter()
                .map(|&lt| layer(&p, rank, lt).work.weight_bytes)
                .sum();
            let shares = m.tied_embeddings && plan.lm_head == plan.embedding;
            let embed = if shares {
                0
            } else {
                let role = plan.role(0, WeightKind::Embedding, rank);
                let [r, c] = role.local_shape(WeightKind::Embedding.full_shape(m));
                (r * c * 2) as u64
            };
            assert_eq!(
                read + embed,
                (plan.rank_parameters(rank) * 2) as u64,
                "{} x{} rank {rank}",
                plan.strategy,
                plan.world_size
            );
        }
    }
}

#[test]
fn predicted_comm_bytes_are_the_collective_bytes_and_vanish_at_one_rank() {
    let hw = HardwareProfile::h100_pcie();
    for plan in all_plans() {
        for w in workloads() {
            for reduce in [ReduceMode::Deterministic, ReduceMode::Fast] {
                let p = predict(&plan, &hw, &w, reduce).expect("predicts");
                let direct = collective_bytes_per_rank(&plan, reduce, w.tokens(), w.logit_rows());
                assert_eq!(p.comm_bytes_per_rank, direct);
                let any_split = plan.world_size > 1
                    && (plan.lm_head.is_split()
                        || plan.layers[0].mlp.is_split()
                        || !matches!(plan.layers[0].attention, AttentionSharding::Replicated));
                if any_split {
                    assert!(
                        direct.iter().all(|&b| b > 0),
                        "{} x{}",
                        plan.strategy,
                        plan.world_size
                    );
                    assert!(p.comm_share() > 0.0);
                } else {
                    assert!(direct.iter().all(|&b| b == 0));
                    assert_eq!(p.comm_share(), 0.0);
                    assert!(p.collectives.is_empty());
                }
            }
        }
    }
}

#[test]
fn deterministic_reduce_publishes_per_chunk_where_fast_publishes_once() {
    // Per row-parallel site, all ranks together publish one vector for the first holder's
    // chunks and one per chunk held by the others; fast mode one vector per rank.
    for plan in all_plans() {
        let det = collective_traffic(&plan, ReduceMode::Deterministic, 3, 1);
        let fast = collective_traffic(&plan, ReduceMode::Fast, 3, 1);
        assert_eq!(det.len(), fast.len());
        let m = &plan.model;
        let vector = (3 * m.hidden * 4) as u64;
        for (d, f) in det.iter().zip(&fast) {
            assert_eq!(d.site, f.site);
            let what = format!("{} x{} {:?}", plan.strategy, plan.world_size, d.site);
            let chunks: Vec<usize> = (0..plan.world_size)
                .map(|r| reduction_chunks(&plan, d.site, r))
                .collect();
            match d.site {
                CollectiveSite::Attention { .. } | CollectiveSite::Mlp { .. } => {
                    assert_eq!(f.bytes_per_rank, vec![vector; plan.world_size], "{what}");
                    let first = chunks
                        .iter()
                        .position(|&c| c > 0)
                        .expect("someone holds chunks");
                    let published = 1 + chunks.iter().sum::<usize>() - chunks[first];
                    assert_eq!(d.total_bytes(), published as u64 * vector, "{what}");
                }
                _ => assert_eq!(d.bytes_per_rank, f.bytes_per_rank, "{what}"),
            }
        }
    }
}

#[test]
fn decode_is_memory_bound_and_long_prefill_compute_bound_on_h200() {
    let hw = HardwareProfile::h200_nvlink();
    let plan = Strategy::Megatron
        .plan(&ModelShape::llama3_8b(), 1)
        .expect("plan");
    let d = predict(
        &plan,
        &hw,
        &Workload::new(Phase::Decode, 1, 1024, 2),
        ReduceMode::Fast,
    )
    .expect("predicts");
    let t = d.ranks[0].total;
    assert!(t.memory_s > 10.0 * t.compute_s);
    // 8.03e9 parameters x 2 bytes at 4.8 TB/s: about 3.3 ms.
    assert!((3.0e-3..4.0e-3).contains(&d.step_s), "{}", d.step_s);
    let pf = predict(
        &plan,
        &hw,
        &Workload::new(Phase::Prefill, 1, 4096, 2),
        ReduceMode::Fast,
    )
    .expect("predicts");
    let t = pf.ranks[0].total;
    assert!(t.compute_s > t.memory_s);
}

#[test]
fn megatron_decode_on_h200_gets_faster_with_ranks_but_not_linearly() {
    let hw = HardwareProfile::h200_nvlink();
    let w = Workload::new(Phase::Decode, 8, 2048, 2);
    let step = |world| {
        let plan = Strategy::Megatron
            .plan(&ModelShape::llama3_8b(), world)
            .expect("plan");
        predict(&plan, &hw, &w, ReduceMode::Deterministic)
            .expect("predicts")
            .step_s
    };
    let (s1, s2, s8) = (step(1), step(2), step(8));
    assert!(s2 < s1 && s8 < s2);
    assert!(s8 > s1 / 8.0, "collectives keep 8 ranks short of 8x");
}

#[test]
fn replicated_plan_on_shared_cpu_is_slower_with_more_ranks() {
    let hw = HardwareProfile::cpu_here();
    let w = Workload::new(Phase::Decode, 1, 64, 4);
    let step = |world| {
        let plan = Strategy::Replicated
            .plan(&ModelShape::smollm2_135m(), world)
            .expect("plan");
        predict(&plan, &hw, &w, ReduceMode::Fast)
            .expect("predicts")
            .step_s
    };
    let (s1, s2) = (step(1), step(2));
    assert!((s2 / s1 - 2.0).abs() < 1e-9, "{s1} {s2}");
}

#[test]
fn empty_workloads_and_unknown_phases_are_errors() {
    let plan = Strategy::Megatron
        .plan(&ModelShape::smollm2_135m(), 2)
        .expect("plan");
    let hw = HardwareProfile::cpu_here();
    let bad = Workload::new(Phase::Decode, 0, 10, 4);
    assert!(matches!(
        predict(&plan, &hw, &bad, ReduceMode::Fast),
        Err(CostError::BadWorkload(_))
    ));
    let bad = Workload::new(Phase::Prefill, 1, 0, 4);
    assert!(predict(&plan, &hw, &bad, ReduceMode::Fast).is_err());
    assert!(matches!(
        Phase::parse("train"),
        Err(CostError::UnknownPhase(_))
    ));
}

#[test]
fn explain_table_names_every_layer_type_and_the_total() {
    let plan = Strategy::Megatron
        .plan(&ModelShape::smollm2_135m(), 2)
        .expect("plan");
    let p = predict(
        &plan,
        &HardwareProfile::cpu_here(),
        &Workload::new(Phase::Decode, 1, 128, 4),
        ReduceMode::Deterministic,
    )
    .expect("predicts");
    let text = render_explain(&p);
    for name in [
        "embedding",
        "attention",
        "mlp",
        "lm_head",
        "total",
        "per token",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let json = serde_json::to_string(&p).expect("serializes");
    let back: Prediction = serde_json::from_str(&json).expect("parses");
    assert_eq!(back.comm_bytes_per_rank, p.comm_bytes_per_rank);
}
