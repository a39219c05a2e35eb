//! Plan construction, JSON round trips and validation errors.

use tessera_plan::{
    AttentionSharding, DimSharding, ModelShape, PlanError, Role, ShardPlan, Span, Strategy,
    WeightKind,
};

fn shapes() -> Vec<ModelShape> {
    vec![ModelShape::smollm2_135m(), ModelShape::llama3_8b()]
}

#[test]
fn every_strategy_gives_a_valid_plan_for_1_to_8_ranks() {
    for shape in shapes() {
        for name in Strategy::NAMES {
            let strategy = Strategy::parse(name).unwrap();
            for world in 1..=8 {
                let plan = strategy.plan(&shape, world).unwrap();
                plan.validate().unwrap();
                assert_eq!(plan.world_size, world);
            }
        }
    }
}

#[test]
fn megatron_on_one_rank_holds_every_parameter() {
    for shape in shapes() {
        let plan = Strategy::Megatron.plan(&shape, 1).unwrap();
        assert_eq!(plan.rank_parameters(0), shape.parameters());
        assert!(plan.collectives().is_empty());
    }
}

#[test]
fn megatron_splits_smollm_heads_five_and_four_on_two_ranks() {
    let plan = Strategy::Megatron
        .plan(&ModelShape::smollm2_135m(), 2)
        .unwrap();
    let r0 = plan.heads(0, 0);
    let r1 = plan.heads(0, 1);
    assert_eq!(
        (r0.q_heads, r0.kv_heads),
        (Span::new(0, 5), Span::new(0, 2))
    );
    assert_eq!(
        (r1.q_heads, r1.kv_heads),
        (Span::new(5, 9), Span::new(1, 3))
    );
    assert_eq!(
        plan.role(3, WeightKind::OProj, 1),
        Role::PartialSum {
            span: Span::new(320, 576)
        }
    );
    assert_eq!(
        plan.role(3, WeightKind::KProj, 1),
        Role::SplitRows {
            span: Span::new(64, 192)
        }
    );
    // Two all-reduces per layer, one for the embedding, one gather of logits.
    assert_eq!(plan.collectives().len(), 2 * 30 + 2);
}

#[test]
fn megatron_parameters_split_without_loss_except_replicated_kv_and_norms() {
    let shape = ModelShape::llama3_8b();
    let plan = Strategy::Megatron.plan(&shape, 4).unwrap();
    let sum: usize = (0..4).map(|r| plan.rank_parameters(r)).sum();
    // 8 kv heads over 4 ranks: nothing but the norms is replicated.
    let norms = (2 * shape.layers + 1) * shape.hidden;
    assert_eq!(sum, shape.parameters() + 3 * norms);
}

#[test]
fn json_round_trip_keeps_the_plan() {
    let shape = ModelShape::smollm2_135m();
    let plan = Strategy::Megatron.plan(&shape, 3).unwrap();
    let back = ShardPlan::from_json(&plan.to_json(), Some(&shape)).unwrap();
    assert_eq!(back, plan);
}

#[test]
fn zero_ranks_is_an_error() {
    let err = Strategy::Megatron
        .plan(&ModelShape::smollm2_135m(), 0)
        .unwrap_err();
    assert!(matches!(err, PlanError::ZeroRanks));
}

#[test]
fn unknown_strategy_names_the_known_ones() {
    let err = Strategy::parse("zigzag").unwrap_err().to_string();
    assert!(err.contains("zigzag") && err.contains("megatron"), "{err}");
}

fn edited(f: impl FnOnce(&mut ShardPlan)) -> PlanError {
    let shape = ModelShape::smollm2_135m();
    let mut plan = Strategy::Megatron.plan(&shape, 2).unwrap();
    f(&mut plan);
    ShardPlan::from_json(&plan.to_json(), Some(&shape)).unwrap_err()
}

#[test]
fn overlapping_mlp_ranges_are_rejected_naming_layer_and_rank() {
    let err = edited(|p| {
        p.layers[4].mlp = DimSharding::Split {
            spans: vec![Span::new(0, 800), Span::new(700, 1536)],
        }
    });
    let msg = err.to_string();
    assert!(matches!(err, PlanError::Overlap { rank: 1, .. }), "{msg}");
    assert!(
        msg.contains("model.layers.4.mlp") && msg.contains("rank 1"),
        "{msg}"
    );
}

#[test]
fn a_gap_in_vocabulary_ranges_is_rejected() {
    let err = edited(|p| {
        p.lm_head = DimSharding::Split {
            spans: vec![Span::new(0, 20000), Span::new(20001, 49152)],
        }
    });
    assert!(
        matches!(
            err,
            PlanError::Gap {
                rank: 1,
                start: 20001,
                previous_end: 20000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn ranges_that_stop_short_are_rejected() {
    let err = edited(|p| {
        p.embedding = DimSharding::Split {
            spans: vec![Span::new(0, 20000), Span::new(20000, 49000)],
        }
    });
    assert!(
        matches!(
            err,
            PlanError::Coverage {
                end: 49000,
                len: 49152,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn kv_heads_that_miss_a_query_group_are_rejected() {
    let err = edited(|p| {
        if let AttentionSharding::Heads { ranks } = &mut p.layers[2].attention {
            ranks[1].kv_heads = Span::new(2, 3);
        }
    });
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            PlanError::KvHeads {
                layer: 2,
                rank: 1,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("rank 1"), "{msg}");
}

#[test]
fn a_plan_for_another_model_is_rejected() {
    let plan = Strategy::Megatron
        .plan(&ModelShape::llama3_8b(), 2)
        .unwrap();
    let err = ShardPlan::from_json(&plan.to_json(), Some(&ModelShape::smollm2_135m())).unwrap_err();
    assert!(matches!(err, PlanError::ModelMismatch { .. }));
}

#[test]
fn wrong_rank_count_in_a_split_is_rejected() {
    let err = edited(|p| {
        p.layers[0].mlp = DimSharding::Split {
            spans: vec![Span::new(0, 1536)],
        }
    });
    assert!(
        matches!(
            err,
            PlanError::RankCount {
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn memory_balanced_gives_a_half_size_rank_about_half_the_parameters() {
    let shape = ModelShape::llama3_8b();
    let plan = Strategy::MemoryBalanced
        .plan_for_memory(&shape, &[80.0, 80.0, 40.0])
        .unwrap();
    plan.validate().unwrap();
    plan.check_deterministic().unwrap();
    let p: Vec<f64> = (0..3).map(|r| plan.rank_parameters(r) as f64).collect();
    let ratio = p[2] / p[0];
    assert!((0.4..0.65).contains(&ratio), "parameters {p:?}");
    assert!((p[0] / p[1] - 1.0).abs() < 0.1, "parameters {p:?}");
    // Equal memories: a valid megatron-like split.
    let even = Strategy::MemoryBalanced.plan(&shape, 4).unwrap();
    let megatron = Strategy::Megatron.plan(&shape, 4).unwrap();
    assert_eq!(even.layers, megatron.layers);
}

#[test]
fn memory_balanced_refuses_a_zero_or_negative_memory() {
    let shape = ModelShape::smollm2_135m();
    for bad in [0.0, -1.0, f64::NAN] {
        let err = Strategy::MemoryBalanced
            .plan_for_memory(&shape, &[1.0, bad])
            .unwrap_err();
        assert!(err.to_string().contains("not a positive size"), "{err}");
    }
}

#[test]
fn names_and_strategies_list_the_same_strategies_in_the_same_order() {
    let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(names, Strategy::NAMES);
    for name in Strategy::NAMES {
        assert_eq!(Strategy::parse(name).unwrap().name(), name);
    }
}

#[test]
fn the_table_shows_collective_bytes_per_token_per_layer_and_per_step() {
    let shape = ModelShape::smollm2_135m();
    let table =
        |strategy: Strategy, tp| tessera_plan::render_table(&strategy.plan(&shape, tp).unwrap(), 4);
    // Megatron: two all-reduces of the hidden state per layer (2 x 576 f32), plus the
    // vocabulary-parallel embedding's all-reduce and the output head's gather once a step.
    let (layer, step) = (2 * 576 * 4, 576 * 4 + 30 * 2 * 576 * 4 + 49_152 * 4);
    let want = format!("{layer} per layer, {step} per step");
    assert!(
        table(Strategy::Megatron, 2).contains(&want),
        "{}",
        table(Strategy::Megatron, 2)
    );
    assert!(table(Strategy::Megatron, 1).contains("0 per layer, 0 per step"));
    // Attention only split: one all-reduce per layer.
    let attn = table(Strategy::AttnTpMlpReplicated, 2);
    assert!(attn.contains(&format!("{} per layer", 576 * 4)), "{attn}");
}
