//! Structured output: `response_format` and vLLM's `guided_*` fields as one [`Grammar`],
//! compiled into the matcher each choice follows.
//!
//! At most one of them may be given (`response_format: {"type": "text"}` counts as none).
//! `json_schema`'s `strict` is accepted either way: the schema is always enforced.

use serde_json::{json, Value};
use tessera_engine::constraint::{ConstraintError, Grammar, TokenConstraint};

use crate::error::ServerError;
use crate::request::CommonParams;
use crate::state::AppState;

/// A grammar with the request field it came from (named in errors).
#[derive(Clone, Debug)]
pub struct Requested {
    /// The grammar.
    pub grammar: Grammar,
    /// The field that asked for it.
    pub field: &'static str,
}

/// The grammar the shared fields ask for, if any.
pub fn requested(common: &CommonParams) -> Result<Option<Requested>, ServerError> {
    let mut found = Vec::new();
    if let Some(rf) = &common.response_format {
        if let Some(g) = response_format(rf)? {
            found.push(Requested {
                grammar: g,
                field: "response_format",
            });
        }
    }
    if let Some(v) = &common.guided_json {
        let schema = match v {
            Value::String(text) => serde_json::from_str(text)
                .map_err(|e| bad("guided_json", format!("guided_json is not valid JSON: {e}")))?,
            other => other.clone(),
        };
        found.push(Requested {
            grammar: Grammar::JsonSchema(schema),
            field: "guided_json",
        });
    }
    if let Some(rx) = &common.guided_regex {
        found.push(Requested {
            grammar: Grammar::Regex(rx.clone()),
            field: "guided_regex",
        });
    }
    if let Some(choices) = &common.guided_choice {
        found.push(Requested {
            grammar: Grammar::Choice(choices.clone()),
            field: "guided_choice",
        });
    }
    if let Some(lark) = &common.guided_grammar {
        found.push(Requested {
            grammar: Grammar::Lark(lark.clone()),
            field: "guided_grammar",
        });
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|r| r.field).collect();
        return Err(bad(
            found[1].field,
            format!(
                "Only one of response_format, guided_json, guided_regex, guided_choice and \
                 guided_grammar may be given, got {}.",
                names.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}

/// The grammar of one `response_format` (`None` for plain text).
fn response_format(rf: &Value) -> Result<Option<Grammar>, ServerError> {
    let kind = rf.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad(
            "response_format.type",
            "response_format needs a string `type`: text, json_object or json_schema.",
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Grammar::JsonSchema(json!({"type": "object"})))),
        "json_schema" => {
            let spec = rf.get("json_schema").ok_or_else(|| {
                bad(
                    "response_format.json_schema",
                    "response_format of type json_schema needs a `json_schema` object.",
                )
            })?;
            match spec.get("schema") {
                Some(s @ (Value::Object(_) | Value::Bool(_))) => {
                    Ok(Some(Grammar::JsonSchema(s.clone())))
                }
                // OpenAI treats a missing schema as any JSON value.
                None | Some(Value::Null) => Ok(Some(Grammar::JsonSchema(json!({})))),
                Some(_) => Err(bad(
                    "response_format.json_schema.schema",
                    "response_format.json_schema.schema must be a JSON schema object.",
                )),
            }
        }
        other => Err(bad(
            "response_format.type",
            format!(
                "Unsupported response_format type {other:?}: use text, json_object or json_schema."
            ),
        )),
    }
}

/// Compiles `requested` for this model; a grammar llguidance refuses is a 400 naming the
/// field it came from.
pub fn compile(state: &AppState, requested: &Requested) -> Result<TokenConstraint, ServerError> {
    let compiler = state.constraints.as_ref().map_err(|e| {
        bad(
            requested.field,
            format!("Constrained decoding is unavailable for this model: {e}"),
        )
    })?;
    compiler.compile(&requested.grammar).map_err(|e| match e {
        ConstraintError::Grammar(m) => bad(
            requested.field,
            format!(
                "{}: the grammar or schema is invalid or unsupported: {m}",
                requested.field
            ),
        ),
        other => ServerError::Engine(other.to_string()),
    })
}

fn bad(field: &str, message: impl Into<String>) -> ServerError {
    ServerError::invalid(Some(field.to_string()), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(body: Value) -> CommonParams {
        serde_json::from_value(body).unwrap()
    }

    fn param(e: ServerError) -> String {
        match e {
            ServerError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("not a 400: {other:?}"),
        }
    }

    #[test]
    fn response_formats_map_to_grammars() {
        let r = |rf: Value| requested(&common(json!({"model": "m", "response_format": rf})));
        assert!(r(json!({"type": "text"})).unwrap().is_none());
        let g = r(json!({"type": "json_object"})).unwrap().unwrap();
        assert_eq!(g.grammar, Grammar::JsonSchema(json!({"type": "object"})));
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let g = r(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}))
            .unwrap()
            .unwrap();
        assert_eq!(g.grammar, Grammar::JsonSchema(schema));
        assert_eq!(
            param(r(json!({"type": "yaml"})).unwrap_err()),
            "response_format.type"
        );
        assert_eq!(
            param(r(json!({"kind": "json_object"})).unwrap_err()),
            "response_format.type"
        );
        assert_eq!(
            param(r(json!({"type": "json_schema", "json_schema": {"schema": 3}})).unwrap_err()),
            "response_format.json_schema.schema"
        );
    }

    #[test]
    fn guided_fields_map_to_grammars_and_exclude_each_other() {
        let r = |b: Value| requested(&common(b));
        let g = r(json!({"model": "m", "guided_json": "{\"type\": \"string\"}"}))
            .unwrap()
            .unwrap();
        assert_eq!(g.grammar, Grammar::JsonSchema(json!({"type": "string"})));
        let g = r(json!({"model": "m", "guided_choice": ["a", "b"]}))
            .unwrap()
            .unwrap();
        assert_eq!(g.grammar, Grammar::Choice(vec!["a".into(), "b".into()]));
        assert_eq!(g.field, "guided_choice");
        let e = r(json!({"model": "m", "guided_regex": "a+", "guided_grammar": "start: \"a\""}));
        assert_eq!(param(e.unwrap_err()), "guided_grammar");
        let e = r(json!({"model": "m", "guided_json": "{nope"}));
        assert_eq!(param(e.unwrap_err()), "guided_json");
    }
}
