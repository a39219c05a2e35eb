//! The engine's resident memory does not grow with the number of requests served: KV
//! memory is allocated once, and nothing per request outlives the request.

use tessera_engine::sampling::SamplingParams;
use tessera_engine::{Coordinator, EngineConfig, EngineHandle, EngineOptions, Event, Request};
use tessera_model::synthetic;
use tessera_plan::{ModelShape, Strategy};

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn serve(engine: &EngineHandle, n: usize, seed: u64) {
    let mut pending = Vec::new();
    for i in 0..n {
        let len = 5 + (i * 7 + seed as usize) % 40;
        let prompt: Vec<u32> = (0..len)
            .map(|j| ((i * 31 + j * 17 + seed as usize) % 2000) as u32)
            .collect();
        let params = SamplingParams {
            temperature: 0.7,
            seed: Some(i as u64),
            max_tokens: 8 + i % 24,
            ignore_eos: true,
            logprobs: if i % 2 == 0 { Some(5) } else { None },
            stop: vec!["never".into()],
            ..SamplingParams::default()
        };
        pending.push(engine.submit_blocking(Request { prompt, params }).unwrap());
        if pending.len() == 32 {
            for mut s in pending.drain(..) {
                while let Some(e) = s.events.blocking_recv() {
                    if matches!(e, Event::Finished { .. }) {
                        break;
                    }
                }
            }
        }
    }
    for mut s in pending {
        while let Some(e) = s.events.blocking_recv() {
            if matches!(e, Event::Finished { .. }) {
                break;
            }
        }
    }
}

#[test]
fn resident_memory_stays_flat_over_1000_more_requests_after_warm_up() {
    let shape = ModelShape {
        hidden: 128,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        head_dim: 16,
        intermediate: 384,
        vocab: 2048,
        tied_embeddings: true,
        qkv_bias: false,
    };
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape, 5, 512).unwrap();
    let plan = Strategy::Megatron.plan(&shape, 2).unwrap();
    let options = EngineOptions {
        kv_cache_bytes: 16 << 20,
        block_size: 16,
        ..EngineOptions::default()
    };
    let coord = Coordinator::start(tmp.path(), plan, &options).unwrap();
    let engine = EngineHandle::start(coord, None, &EngineConfig::default()).unwrap();
    // The KV pool is resident from the start. The allocator's high-water mark settles
    // within the first thousand requests (measured: +12% on this small process between
    // request 10 and 1,000, then +0.1% over 5,000 more); a leak would keep growing.
    serve(&engine, 10, 1);
    serve(&engine, 1000, 2);
    let after_warmup = resident_bytes();
    serve(&engine, 1000, 3);
    let after_1000 = resident_bytes();

    let growth = after_1000 as f64 / after_warmup as f64 - 1.0;
    assert!(
        growth < 0.05,
        "resident memory grew {:.1}% ({after_warmup} -> {after_1000} bytes) over 1000 requests",
        growth * 100.0
    );
    let stats = engine.stats();
    assert!(stats.generated_tokens > 10_000, "{stats:?}");
    engine.shutdown();
}
