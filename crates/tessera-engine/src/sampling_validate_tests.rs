//! Tests of sampling-parameter validation and the JSON defaults.

use super::*;

#[test]
fn validate_accepts_defaults_and_boundary_values() {
    assert_eq!(SamplingParams::default().validate(10), Ok(()));
    let edges = SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        min_p: 1.0,
        presence_penalty: -2.0,
        frequency_penalty: 2.0,
        repetition_penalty: 0.01,
        logit_bias: vec![(9, -1000.0)],
        logprobs: Some(20),
        max_tokens: 0,
        prompt_logprobs: Some(20),
        stop: vec!["x".into()],
        ..SamplingParams::default()
    };
    assert_eq!(edges.validate(10), Ok(()));
}

#[test]
fn validate_rejects_each_bad_parameter_by_name() {
    type Edit = fn(&mut SamplingParams);
    let cases: [(&str, Edit); 18] = [
        ("temperature", |p| p.temperature = f32::NAN),
        ("temperature", |p| p.temperature = -0.1),
        ("temperature", |p| p.temperature = f32::INFINITY),
        ("top_p", |p| p.top_p = 0.0),
        ("top_p", |p| p.top_p = 1.01),
        ("top_p", |p| p.top_p = f32::NAN),
        ("min_p", |p| p.min_p = -0.1),
        ("min_p", |p| p.min_p = 1.5),
        ("repetition_penalty", |p| p.repetition_penalty = 0.0),
        ("repetition_penalty", |p| p.repetition_penalty = -1.0),
        ("presence_penalty", |p| p.presence_penalty = 2.5),
        ("frequency_penalty", |p| p.frequency_penalty = -2.01),
        ("logprobs", |p| p.logprobs = Some(21)),
        ("prompt_logprobs", |p| p.prompt_logprobs = Some(21)),
        ("logit_bias", |p| p.logit_bias = vec![(10, 1.0)]),
        ("logit_bias", |p| p.logit_bias = vec![(1, f32::NAN)]),
        ("stop", |p| p.stop = vec!["ok".into(), String::new()]),
        ("frequency_penalty", |p| p.frequency_penalty = f32::NAN),
    ];
    for (name, edit) in cases {
        let mut params = SamplingParams::default();
        edit(&mut params);
        let message = match params.validate(10) {
            Err(e) => e.to_string(),
            Ok(()) => panic!("accepted a bad `{name}`: {params:?}"),
        };
        assert!(message.contains(&format!("`{name}`")), "{message}");
        assert!(message.contains("must be"), "{message}");
    }
}

#[test]
fn missing_json_fields_take_their_defaults() {
    let params: SamplingParams =
        serde_json::from_str(r#"{"temperature": 0.5, "logit_bias": [[3, -100.0]]}"#).unwrap();
    let expected = SamplingParams {
        temperature: 0.5,
        logit_bias: vec![(3, -100.0)],
        ..SamplingParams::default()
    };
    assert_eq!(params, expected);
}
