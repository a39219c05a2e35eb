//! A sequence's logits are bit-identical whether it runs alone or inside a batch of other
//! sequences, wherever its cache blocks lie, and however its prompt was chunked (at 1, 2
//! and 3 ranks, with an f32 or a bf16 KV cache).

use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tessera_engine::{Coordinator, EngineOptions, StepSeq};
use tessera_model::{synthetic, KvDtype, LogitRows};
use tessera_plan::Strategy;

#[test]
fn logits_do_not_depend_on_batch_companions_block_placement_or_chunking() {
    let f32_kv = alone_and_batched(KvDtype::F32);
    let bf16_kv = alone_and_batched(KvDtype::Bf16);
    // The bf16 run must be able to fail: its cache is not silently f32.
    assert_ne!(f32_kv, bf16_kv, "a bf16 KV cache gave f32's logits");
    let worst = f32_kv
        .iter()
        .zip(&bf16_kv)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 0.05, "bf16 KV moved a logit by {worst}");
}

/// Checks batch invariance at tp 1..3 with a `kv` cache; returns tp 1's target logits
/// alone.
fn alone_and_batched(kv: KvDtype) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let shape = synthetic::random_shape(&mut rng);
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape, 11, 128).unwrap();
    let options = EngineOptions {
        kv_cache_bytes: 4 << 20,
        block_size: 4,
        kv_dtype: Some(kv),
        ..EngineOptions::default()
    };
    let mut first: Option<Vec<f32>> = None;
    for tp in [1, 2, 3] {
        let plan = Strategy::Megatron.plan(&shape, tp).unwrap();
        let mut engine = Coordinator::start(tmp.path(), plan, &options).unwrap();
        let bs = engine.block_size();
        // The target comes first: the shuffle's draws depend on the block count, which
        // depends on the cache's dtype.
        let target: Vec<u32> = (0..13)
            .map(|_| rng.random_range(0..shape.vocab as u32))
            .collect();
        let mut free: Vec<u32> = (0..engine.num_blocks() as u32).collect();
        free.shuffle(&mut rng);

        // Alone, in blocks 0.., in one prefill.
        let alone = engine.forward(&target, LogitRows::All).unwrap();

        // In a batch of 5 sequences with scattered blocks, prompt split in chunks 5 + 8,
        // the target placed third.
        let table: Vec<u32> = (0..target.len().div_ceil(bs))
            .map(|_| free.pop().unwrap())
            .collect();
        let others: Vec<(Vec<u32>, Vec<u32>)> = (0..4)
            .map(|_| {
                let len: usize = rng.random_range(1..20);
                let toks: Vec<u32> = (0..len)
                    .map(|_| rng.random_range(0..shape.vocab as u32))
                    .collect();
                let t: Vec<u32> = (0..len.div_ceil(bs)).map(|_| free.pop().unwrap()).collect();
                (toks, t)
            })
            .collect();
        let mut batched = Vec::new();
        for (chunk_start, chunk_end) in [(0usize, 5usize), (5, 13)] {
            let mut seqs: Vec<StepSeq> = others
                .iter()
                .take(2)
                .map(|(toks, t)| StepSeq {
                    id: 0,
                    tokens: toks.clone(),
                    start: 0,
                    block_table: t.clone(),
                    logits: LogitRows::Last,
                })
                .collect();
            seqs.push(StepSeq {
                id: 0,
                tokens: target[chunk_start..chunk_end].to_vec(),
                start: chunk_start,
                block_table: table.clone(),
                logits: LogitRows::All,
            });
            seqs.extend(others.iter().skip(2).map(|(toks, t)| StepSeq {
                id: 0,
                tokens: toks.clone(),
                start: 0,
                block_table: t.clone(),
                logits: LogitRows::None,
            }));
            let out = engine.step(seqs).unwrap();
            let vocab = shape.vocab;
            // Two "Last" rows come first, then the target's rows.
            batched.extend_from_slice(&out[2 * vocab..]);
        }
        assert_eq!(
            alone, batched,
            "{kv:?} KV, tp {tp}: batched logits differ from the sequence alone"
        );
        // Each tp draws its own target; tp 1's is the same for both caches.
        first.get_or_insert(alone);
    }
    first.unwrap_or_default()
}
