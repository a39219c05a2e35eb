use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A byte-level `tokenizer.json`: id 0 is the special `<eos>`, then every printable ASCII
/// character (space as `Ġ`), then a few multi-byte words, as real vocabularies have.
fn tokenizer_json() -> (String, Vec<Vec<u8>>) {
    let mut vocab = serde_json::Map::new();
    let mut bytes = vec![b"<eos>".to_vec()];
    let mut add = |name: String, b: Vec<u8>| {
        vocab.insert(name, serde_json::json!(bytes.len()));
        bytes.push(b);
    };
    add("Ġ".into(), b" ".to_vec());
    for c in 0x21u8..0x7f {
        add((c as char).to_string(), vec![c]);
    }
    for w in [
        "{\"", "\":", "true", "false", "red", "Ġ\"", "\",", "ĠĠ", "12",
    ] {
        add(w.to_string(), w.replace('Ġ', " ").into_bytes());
    }
    let json = serde_json::json!({
        "added_tokens": [{"id": 0, "content": "<eos>", "special": true}],
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab},
    });
    (json.to_string(), bytes)
}

fn compiler(vocab: usize) -> (ConstraintCompiler, Vec<Vec<u8>>) {
    let (json, bytes) = tokenizer_json();
    (ConstraintCompiler::new(&json, vocab, &[0]).unwrap(), bytes)
}

/// Samples from random logits under `constraint` until it stops or emits `<eos>`;
/// returns the text.
fn generate(
    constraint: &mut TokenConstraint,
    bytes: &[Vec<u8>],
    vocab: usize,
    seed: u64,
) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..400 {
        let logits: Vec<f32> = (0..vocab).map(|_| rng.random_range(-4.0..4.0)).collect();
        let masked = constraint.masked(&logits).unwrap();
        let (tok, best) = masked
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |b, (i, &l)| if l > b.1 { (i, l) } else { b },
            );
        assert!(best.is_finite(), "the mask forbids every token");
        if tok == 0 {
            break;
        }
        out.extend_from_slice(&bytes[tok]);
        if constraint.accept(tok as u32).unwrap() {
            break;
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn random_logits_under_a_json_schema_give_valid_json() {
    let (c, bytes) = compiler(128);
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "color": {"enum": ["red", "green"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["ok", "color", "n"],
        "additionalProperties": false,
    });
    let grammar = Grammar::JsonSchema(schema);
    for seed in 0..6 {
        let mut m = c.compile(&grammar).unwrap();
        let text = generate(&mut m, &bytes, 128, seed);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v["ok"].is_boolean(), "{text}");
        assert!(
            ["red", "green"].contains(&v["color"].as_str().unwrap()),
            "{text}"
        );
        assert!((0..=99).contains(&v["n"].as_i64().unwrap()), "{text}");
        assert_eq!(v.as_object().unwrap().len(), 3, "{text}");
    }
}

#[test]
fn choices_and_regexes_are_followed_exactly() {
    let (c, bytes) = compiler(128);
    let choices = vec!["red".to_string(), "blue sky".to_string()];
    let grammar = Grammar::Choice(choices.clone());
    for seed in 0..5 {
        let text = generate(&mut c.compile(&grammar).unwrap(), &bytes, 128, seed);
        assert!(choices.contains(&text), "{text:?}");
    }
    let grammar = Grammar::Regex(r"[0-9]{3}-[a-c]+".into());
    for seed in 0..5 {
        let text = generate(&mut c.compile(&grammar).unwrap(), &bytes, 128, seed);
        let (digits, letters) = text.split_once('-').unwrap();
        assert!(
            digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()),
            "{text}"
        );
        assert!(!letters.is_empty() && letters.bytes().all(|b| (b'a'..=b'c').contains(&b)));
    }
}

#[test]
fn a_complete_choice_stops_and_forbids_other_tokens() {
    let (c, bytes) = compiler(128);
    let mut m = c
        .compile(&Grammar::Lark("start: \"true\" | \"false\"".into()))
        .unwrap();
    let id = |w: &str| bytes.iter().position(|b| b == w.as_bytes()).unwrap() as u32;
    assert!(m.allows(id("true")));
    assert!(m.allows(id("t")));
    assert!(!m.allows(id("red")));
    assert!(!m.allows(0), "end-of-sequence before a complete match");
    assert!(
        m.accept(id("true")).unwrap(),
        "nothing may follow a complete choice"
    );
}

#[test]
fn a_cloned_matcher_is_independent() {
    let (c, bytes) = compiler(128);
    let id = |w: &str| bytes.iter().position(|b| b == w.as_bytes()).unwrap() as u32;
    let mut a = c.compile(&Grammar::Regex("(ab|cd)x".into())).unwrap();
    let mut b = a.clone();
    a.accept(id("a")).unwrap();
    assert!(a.allows(id("b")) && !a.allows(id("d")));
    assert!(
        b.allows(id("c")),
        "the clone did not see the first matcher's token"
    );
}

#[test]
fn invalid_grammars_are_refused() {
    let (c, _) = compiler(128);
    for g in [
        Grammar::Regex("(unclosed".into()),
        Grammar::Lark("start: undefined_rule".into()),
        Grammar::Choice(Vec::new()),
        Grammar::JsonSchema(serde_json::json!({"type": "no-such-type"})),
    ] {
        assert!(
            matches!(c.compile(&g), Err(ConstraintError::Grammar(_))),
            "{g:?}"
        );
    }
    let (json, _) = tokenizer_json();
    assert!(matches!(
        ConstraintCompiler::new(&json, 10, &[0]),
        Err(ConstraintError::Tokenizer(_))
    ));
    assert!(ConstraintCompiler::new("{}", 200, &[0]).is_err());
}

#[test]
fn mask_sets_forbidden_logits_to_minus_infinity() {
    let mut mask = SimpleVob::alloc(70);
    for i in [0usize, 31, 32, 69] {
        mask.allow_token(i as u32);
    }
    let mut logits = vec![1.0; 70];
    apply_mask(&mask, &mut logits);
    for (i, l) in logits.iter().enumerate() {
        assert_eq!(l.is_finite(), [0, 31, 32, 69].contains(&i), "{i}");
    }
}
