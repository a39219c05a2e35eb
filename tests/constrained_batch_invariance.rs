//! Constrained decoding through the engine: a request under a JSON schema produces the
//! same tokens alone and inside a batch of other requests (constrained and not), and its
//! output is valid under the schema every time, also at temperature 1.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tessera_engine::constraint::{ConstraintCompiler, Grammar, TokenConstraint};
use tessera_engine::sampling::SamplingParams;
use tessera_engine::{
    Coordinator, EngineConfig, EngineHandle, EngineOptions, Event, FinishReason, Request,
};
use tessera_model::synthetic;
use tessera_plan::{ModelShape, Strategy};

const VOCAB: usize = 97;

fn shape() -> ModelShape {
    ModelShape {
        hidden: 32,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        intermediate: 40,
        vocab: VOCAB,
        tied_embeddings: false,
        qkv_bias: false,
    }
}

/// A byte-level vocabulary for the random model: id 0 is the end-of-sequence token (the
/// synthetic config's), ids 1.. are the printable ASCII characters, space first.
fn tokenizer_json() -> (String, Vec<u8>) {
    let mut vocab = serde_json::Map::new();
    let mut bytes = vec![0u8];
    for (i, c) in (0x20u8..0x7f).take(VOCAB - 1).enumerate() {
        let name = if c == b' ' {
            "Ġ".to_string()
        } else {
            (c as char).to_string()
        };
        vocab.insert(name, json!(i + 1));
        bytes.push(c);
    }
    let j = json!({
        "added_tokens": [{"id": 0, "content": "</s>", "special": true}],
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab},
    });
    (j.to_string(), bytes)
}

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0, "maximum": 999},
            "tag": {"enum": ["ab", "cd", "ef"]},
            "ok": {"type": "boolean"},
        },
        "required": ["n", "tag", "ok"],
        "additionalProperties": false,
    })
}

fn run(
    engine: &EngineHandle,
    requests: Vec<(Request, Option<TokenConstraint>)>,
) -> Vec<(Vec<u32>, FinishReason)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let subs: Vec<_> = requests
        .into_iter()
        .map(|(r, c)| rt.block_on(engine.submit_constrained(r, c)).unwrap())
        .collect();
    subs.into_iter()
        .map(|mut s| {
            let mut ids = Vec::new();
            loop {
                match s.events.blocking_recv().expect("a Finished event") {
                    Event::Token { id, .. } => ids.push(id),
                    Event::PromptLogprobs(_) => {}
                    Event::Finished { reason, .. } => return (ids, reason),
                }
            }
        })
        .collect()
}

fn sampled(seed: u64, max_tokens: usize) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        max_tokens,
        ..SamplingParams::default()
    }
}

#[test]
fn constrained_tokens_are_valid_and_do_not_depend_on_batch_companions() {
    let tmp = tempfile::tempdir().unwrap();
    synthetic::write_random_model(tmp.path(), &shape(), 5, 256).unwrap();
    let plan = Strategy::Megatron.plan(&shape(), 2).unwrap();
    let options = EngineOptions {
        kv_cache_bytes: 8 << 20,
        block_size: 4,
        ..EngineOptions::default()
    };
    let coord = Coordinator::start(tmp.path(), plan, &options).unwrap();
    let engine = EngineHandle::start(coord, None, &EngineConfig::default()).unwrap();
    let (json, bytes) = tokenizer_json();
    let compiler = ConstraintCompiler::new(&json, VOCAB, engine.default_stop_ids()).unwrap();
    let grammar = compiler.compile(&Grammar::JsonSchema(schema())).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let prompt = |rng: &mut ChaCha8Rng| -> Vec<u32> {
        (0..rng.random_range(3..12))
            .map(|_| rng.random_range(1..VOCAB as u32))
            .collect()
    };
    for seed in 0..4u64 {
        let target = Request {
            prompt: prompt(&mut rng),
            params: sampled(seed, 120),
        };
        let alone = run(&engine, vec![(target.clone(), Some(grammar.clone()))]);
        let mut batch: Vec<(Request, Option<TokenConstraint>)> = (0..5)
            .map(|i| {
                let r = Request {
                    prompt: prompt(&mut rng),
                    params: sampled(100 + i, 30),
                };
                (r, (i % 2 == 0).then(|| grammar.clone()))
            })
            .collect();
        batch.insert(2, (target, Some(grammar.clone())));
        let together = run(&engine, batch);
        assert_eq!(
            alone[0], together[2],
            "seed {seed}: tokens changed inside a batch"
        );
        let (ids, reason) = &alone[0];
        assert_eq!(*reason, FinishReason::Stop, "seed {seed}");
        let text: String = ids.iter().map(|&i| bytes[i as usize] as char).collect();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!((0..=999).contains(&v["n"].as_i64().unwrap()), "{text}");
        assert!(
            ["ab", "cd", "ef"].contains(&v["tag"].as_str().unwrap()),
            "{text}"
        );
        assert!(
            v["ok"].is_boolean() && v.as_object().unwrap().len() == 3,
            "{text}"
        );
    }
    engine.shutdown();
}
