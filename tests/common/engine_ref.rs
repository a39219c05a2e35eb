//! The reference cases and an engine driver shared by the real-model engine tests.

use serde_json::Value;
use tessera_engine::sampling::SamplingParams;
use tessera_engine::{EngineHandle, Event, Request};

/// One reference prompt (plain or chat form) with Hugging Face's greedy tokens and margins.
pub struct Case {
    pub name: String,
    pub prompt: Vec<u32>,
    pub greedy: Vec<u32>,
    pub margins: Vec<f64>,
}

/// Every public reference prompt, in plain and chat form.
pub fn cases() -> Vec<Case> {
    let text =
        std::fs::read_to_string(super::reference_dir().join("reference_public.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    for r in reference["results"].as_array().unwrap() {
        for form in ["plain", "chat"] {
            let f = &r[form];
            out.push(Case {
                name: format!("{} {form}", r["id"].as_str().unwrap()),
                prompt: ids(&f["prompt_ids"]),
                greedy: ids(&f["greedy_ids"]),
                margins: f["greedy_margin"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_f64().unwrap())
                    .collect(),
            });
        }
    }
    out
}

/// Greedy ids and, per token, its log-probability and the top-3 alternatives.
pub type Trace = (Vec<u32>, Vec<(f32, Vec<(u32, f32)>)>);

/// Runs every prompt at once through `engine` (greedy, 32 tokens, end-of-sequence ignored).
pub fn run_all(engine: &EngineHandle, prompts: &[Vec<u32>]) -> Vec<Trace> {
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 32,
        ignore_eos: true,
        logprobs: Some(3),
        ..SamplingParams::default()
    };
    let subs: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .submit_blocking(Request {
                    prompt: p.clone(),
                    params: params.clone(),
                })
                .unwrap()
        })
        .collect();
    subs.into_iter()
        .map(|mut s| {
            let mut ids = Vec::new();
            let mut lps = Vec::new();
            while let Some(e) = s.events.blocking_recv() {
                match e {
                    Event::Token { id, logprobs, .. } => {
                        ids.push(id);
                        let l = logprobs.unwrap();
                        lps.push((l.logprob, l.top));
                    }
                    Event::Finished { .. } => break,
                    Event::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
                }
            }
            (ids, lps)
        })
        .collect()
}
