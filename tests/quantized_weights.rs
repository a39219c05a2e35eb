//! Block-quantized weights (`--dtype q8_0|q4_0`) on tiny random models: the logits have
//! the same bits at 1, 2 and 3 ranks (deterministic reduce) and alone or inside a batch,
//! they are not the f32 logits (the blocks are really used), and a column split that cuts
//! a 32-column block is refused at load with a typed error naming the weight.
//!
//! Shapes are chosen so every split lands on block boundaries: head_dim 32 (o_proj
//! columns go by whole heads) and intermediate 256 (down_proj columns go by 32-wide
//! reduction chunks).

use tessera_engine::{Coordinator, EngineOptions, StepSeq};
use tessera_model::{synthetic, LogitRows, ModelError, RankModel, WeightDtype};
use tessera_plan::{ModelShape, ReduceMode, Strategy};

fn shape(intermediate: usize, tied: bool) -> ModelShape {
    ModelShape {
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        intermediate,
        vocab: 97,
        tied_embeddings: tied,
        qkv_bias: false,
    }
}

fn engine(dir: &std::path::Path, shape: &ModelShape, tp: usize, dtype: WeightDtype) -> Coordinator {
    let plan = Strategy::Megatron.plan(shape, tp).unwrap();
    let options = EngineOptions {
        dtype,
        kv_cache_bytes: 4 << 20,
        block_size: 4,
        ..EngineOptions::default()
    };
    Coordinator::start(dir, plan, &options).unwrap()
}

/// Logits of every prompt position, then of three decoded tokens.
fn logits(dir: &std::path::Path, shape: &ModelShape, tp: usize, dtype: WeightDtype) -> Vec<f32> {
    let mut engine = engine(dir, shape, tp, dtype);
    let prompt: Vec<u32> = (0..11).map(|i| (i * 31 % shape.vocab) as u32).collect();
    let mut out = engine.forward(&prompt, LogitRows::All).unwrap();
    for t in [5u32, 60, 7] {
        out.extend(engine.forward(&[t], LogitRows::Last).unwrap());
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn q8_0_and_q4_0_logits_have_the_same_bits_at_1_to_3_ranks() {
    for (seed, tied) in [(3u64, true), (4, false)] {
        let shape = shape(256, tied);
        let tmp = tempfile::tempdir().unwrap();
        synthetic::write_random_model(tmp.path(), &shape, seed, 64).unwrap();
        let f32_logits = logits(tmp.path(), &shape, 1, WeightDtype::F32);
        for dtype in [WeightDtype::Q8_0, WeightDtype::Q4_0] {
            let one = logits(tmp.path(), &shape, 1, dtype);
            assert!(one.iter().all(|v| v.is_finite()), "{dtype:?} tied={tied}");
            assert_ne!(
                bits(&one),
                bits(&f32_logits),
                "{dtype:?} tied={tied}: logits equal f32's, the blocks are not used"
            );
            let diff = one
                .iter()
                .zip(&f32_logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // 4-bit weights on random uniform values move the logits by a fair fraction
            // of their spread; they must still be the same model.
            let spread = f32_logits.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                diff < 0.5 * spread,
                "{dtype:?} tied={tied}: {diff} away from f32 (spread {spread})"
            );
            for tp in 2..=3 {
                let many = logits(tmp.path(), &shape, tp, dtype);
                assert!(
                    bits(&one) == bits(&many),
                    "{dtype:?} tied={tied}: tp {tp} differs from tp 1"
                );
            }
        }
    }
}

#[test]
fn quantized_logits_alone_equal_those_inside_a_batch() {
    let shape = shape(256, true);
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape, 9, 64).unwrap();
    let target: Vec<u32> = (0..13).map(|i| (i * 17 % shape.vocab) as u32).collect();
    for (dtype, tp) in [(WeightDtype::Q8_0, 2), (WeightDtype::Q4_0, 3)] {
        let mut engine = engine(tmp.path(), &shape, tp, dtype);
        let alone = engine.forward(&target, LogitRows::All).unwrap();
        // The target in blocks 20.., its prompt in chunks 6 + 7, between two companions
        // whose last rows come first in the output.
        let table: Vec<u32> = (20..24).collect();
        let companion = |block0: u32, len: u32| StepSeq {
            id: 0,
            tokens: (0..len).map(|i| (i * 7 + block0) % 97).collect(),
            start: 0,
            block_table: (block0..block0 + len.div_ceil(4)).collect(),
            logits: LogitRows::Last,
        };
        let mut batched = Vec::new();
        for (a, b) in [(0usize, 6usize), (6, 13)] {
            let seqs = vec![
                companion(if a == 0 { 0 } else { 4 }, 9),
                StepSeq {
                    id: 0,
                    tokens: target[a..b].to_vec(),
                    start: a,
                    block_table: table.clone(),
                    logits: LogitRows::All,
                },
                companion(if a == 0 { 8 } else { 11 }, 5),
            ];
            let out = engine.step(seqs).unwrap();
            let v = shape.vocab;
            // Rows: companion's last, the target's rows, the other companion's last.
            batched.extend_from_slice(&out[v..out.len() - v]);
        }
        assert_eq!(
            bits(&alone),
            bits(&batched),
            "{dtype:?} tp {tp}: batched logits differ from the sequence alone"
        );
    }
}

#[test]
fn a_column_split_inside_a_block_is_refused_naming_the_weight() {
    // intermediate 128 reduces in 16-wide chunks: 3 ranks hold down_proj columns
    // 0..48, 48..96, 96..128, which cut 32-column blocks.
    let shape = shape(128, true);
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape, 5, 64).unwrap();
    let plan = Strategy::Megatron.plan(&shape, 3).unwrap();
    let reduce = ReduceMode::Deterministic;
    let err = RankModel::load_dir(tmp.path(), &plan, 0, WeightDtype::Q8_0, reduce)
        .err()
        .expect("a misaligned column split must be refused");
    match &err {
        ModelError::BlockSplit {
            name,
            start,
            end,
            total,
            ..
        } => {
            assert!(name.contains("down_proj"), "{err}");
            assert_eq!((*start, *end, *total), (0, 48, 128), "{err}");
        }
        other => panic!("expected BlockSplit, got {other}"),
    }
    assert!(err.to_string().contains("32-column"), "{err}");
    // The same split is fine at f32, and an aligned one at q8_0.
    assert!(RankModel::load_dir(tmp.path(), &plan, 0, WeightDtype::F32, reduce).is_ok());
    let plan2 = Strategy::Megatron.plan(&shape, 2).unwrap();
    assert!(RankModel::load_dir(tmp.path(), &plan2, 0, WeightDtype::Q8_0, reduce).is_ok());
}
