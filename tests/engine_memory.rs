//! The engine's memory does not grow with the number of requests served: KV memory is
//! allocated once, and nothing per request outlives the request.
//!
//! Live heap bytes are counted by a wrapping global allocator rather than read from the
//! resident set size: the RSS of this small process moves by megabytes with the malloc
//! arenas' high-water marks (11% between two runs on the CI machine), which says nothing
//! about leaks, while live bytes return to the same level once requests are gone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tessera_engine::sampling::SamplingParams;
use tessera_engine::{Coordinator, EngineConfig, EngineHandle, EngineOptions, Event, Request};
use tessera_model::synthetic;
use tessera_plan::{ModelShape, Strategy};

/// System allocator that keeps a running count of bytes allocated and not yet freed.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_heap_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

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

/// 128 requests at once, prompts of 120 tokens: steps reach the engine's token budget in
/// prefill and its sequence budget in decode.
fn burst(engine: &EngineHandle) {
    let streams: Vec<_> = (0..128)
        .map(|i| {
            let prompt: Vec<u32> = (0..120)
                .map(|j| ((i * 131 + j * 7) % 2000) as u32)
                .collect();
            let params = SamplingParams {
                temperature: 0.7,
                seed: Some(i as u64),
                max_tokens: 16,
                ignore_eos: true,
                logprobs: Some(5),
                stop: vec!["never".into()],
                ..SamplingParams::default()
            };
            engine.submit_blocking(Request { prompt, params }).unwrap()
        })
        .collect();
    for mut s in streams {
        while let Some(e) = s.events.blocking_recv() {
            if matches!(e, Event::Finished { .. }) {
                break;
            }
        }
    }
}

/// Requests served after the warm-up.
const REQUESTS: usize = 8000;
/// Phases the measured requests run in.
const PHASES: usize = 8;
/// Largest growth allowed in the median phase (bytes).
const PHASE_SLACK: isize = 16 * 1024;
/// Largest growth allowed over all phases (bytes): one step's buffers at most.
const TOTAL_SLACK: isize = 1024 * 1024;

#[test]
fn live_heap_stays_flat_over_8000_more_requests_after_warm_up() {
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
    // A step budget of 128 tokens is reached in almost every wave below (and surely in the
    // burst): the communicator's slots hold the largest step's contribution, so the
    // warm-up must have made the largest step there is.
    let config = EngineConfig {
        max_batch_tokens: 128,
        ..EngineConfig::default()
    };
    let engine = EngineHandle::start(coord, None, &config).unwrap();
    // Warm-up fills what is bounded but lazily grown: the prefix-cache index (at most one
    // entry per KV block), channel buffers, latency histograms, scratch vectors. Step
    // scratch grows with the largest step, which with waves of short prompts depends on
    // timing; a burst of long prompts first makes steps of the full token and sequence
    // budgets, which reaches most high-water marks (not always all: see below).
    burst(&engine);
    serve(&engine, 10, 1);
    serve(&engine, 1000, 2);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let heap_warm = live_heap_bytes();
    let rss_warm = resident_bytes();
    // The measured requests run in PHASES phases, the live heap read after each. A leak
    // grows the heap in every phase by the same amount per request. What may still grow
    // once is bounded by one step, not by the requests: buffers kept at the largest step
    // seen (workspace, communicator slots), and which step is the largest depends on
    // thread timing, so the warm-up above misses that high-water mark in some runs (seen:
    // a 34 KB step in most runs, a 138 KB and a 460 KB step in some, a few steps at most).
    // So the median phase must grow less than PHASE_SLACK (a leak of 16 bytes per request
    // adds 16 KB to every phase and fails here), and the whole run less than TOTAL_SLACK.
    let mut heaps = vec![heap_warm];
    for phase in 0..PHASES {
        serve(&engine, REQUESTS / PHASES, 3 + phase as u64);
        std::thread::sleep(std::time::Duration::from_millis(100));
        heaps.push(live_heap_bytes());
    }
    let rss_after = resident_bytes();
    let mut growths: Vec<isize> = heaps.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("live heap per phase {heaps:?}, rss {rss_warm} -> {rss_after}");
    growths.sort_unstable();
    let median = growths[PHASES / 2];
    assert!(
        median < PHASE_SLACK,
        "live heap grew in most phases of {} requests: {heaps:?} (growths {growths:?})",
        REQUESTS / PHASES
    );
    let total = heaps[PHASES] - heap_warm;
    assert!(
        total < TOTAL_SLACK,
        "live heap grew by {total} bytes over {REQUESTS} requests: {heaps:?} \
         (resident set {rss_warm} -> {rss_after} bytes)"
    );
    let stats = engine.stats();
    assert!(stats.generated_tokens > 10_000, "{stats:?}");
    engine.shutdown();
}
