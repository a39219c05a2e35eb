//! Reading the input file: each line is an OpenAI Batch API request or a plain document,
//! told apart by its fields; lines that are neither become per-line failures.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::BatchError;

/// What one valid input line asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// An OpenAI Batch API request: `url` is `/v1/chat/completions` or `/v1/completions`.
    OpenAi {
        /// The endpoint.
        url: String,
        /// The request body, as sent to the endpoint.
        body: Value,
    },
    /// A document to summarize.
    Document {
        /// Its text.
        text: String,
    },
}

/// One valid input line.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// 1-based line number in the input file.
    pub line: usize,
    /// `custom_id` (OpenAI lines) or `id` (documents).
    pub id: String,
    /// What to do.
    pub task: Task,
}

/// An input line that cannot be run, with the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidLine {
    /// 1-based line number.
    pub line: usize,
    /// The id, when one could be read.
    pub id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// The parsed input: runnable items and invalid lines, in file order.
#[derive(Debug, Default)]
pub struct Input {
    /// Lines that can run.
    pub items: Vec<Item>,
    /// Lines that cannot.
    pub invalid: Vec<InvalidLine>,
}

const ENDPOINTS: [&str; 2] = ["/v1/chat/completions", "/v1/completions"];

/// Parses every non-blank line of `text`; refuses the whole input when an id repeats.
pub fn parse_input(text: &str, summarize: bool) -> Result<Input, BatchError> {
    let mut input = Input::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(raw, line, summarize);
        let id = match &parsed {
            Ok(item) => Some(item.id.clone()),
            Err(bad) => bad.id.clone(),
        };
        if let Some(id) = id {
            if let Some(&first) = seen.get(&id) {
                return Err(BatchError::DuplicateId {
                    id,
                    first,
                    second: line,
                });
            }
            seen.insert(id, line);
        }
        match parsed {
            Ok(item) => input.items.push(item),
            Err(bad) => input.invalid.push(bad),
        }
    }
    Ok(input)
}

fn parse_line(raw: &str, line: usize, summarize: bool) -> Result<Item, InvalidLine> {
    let bad = |id: Option<String>, reason: String| InvalidLine { line, id, reason };
    let value: Value =
        serde_json::from_str(raw).map_err(|e| bad(None, format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(bad(None, "a line must be a JSON object".into()));
    };
    if let Some(custom) = obj.get("custom_id") {
        let id = id_string(custom)
            .ok_or_else(|| bad(None, "custom_id must be a non-empty string".into()))?;
        let method = obj.get("method").and_then(Value::as_str).unwrap_or("");
        if method != "POST" {
            return Err(bad(
                Some(id),
                format!("method must be \"POST\", got {method:?}"),
            ));
        }
        let url = obj.get("url").and_then(Value::as_str).unwrap_or("");
        if !ENDPOINTS.contains(&url) {
            return Err(bad(
                Some(id),
                format!("url must be one of {ENDPOINTS:?}, got {url:?}"),
            ));
        }
        let body = match obj.get("body") {
            Some(b @ Value::Object(map)) => {
                if map.get("stream").and_then(Value::as_bool) == Some(true) {
                    return Err(bad(Some(id), "stream is not supported in a batch".into()));
                }
                b.clone()
            }
            _ => return Err(bad(Some(id), "body must be a JSON object".into())),
        };
        return Ok(Item {
            line,
            id,
            task: Task::OpenAi {
                url: url.to_string(),
                body,
            },
        });
    }
    let Some(id) = obj.get("id").and_then(id_string) else {
        return Err(bad(
            None,
            "neither an OpenAI batch line (custom_id, method, url, body) nor a document (id, text)"
                .into(),
        ));
    };
    let Some(text) = obj.get("text").and_then(Value::as_str) else {
        return Err(bad(
            Some(id),
            "a document needs a string field \"text\"".into(),
        ));
    };
    if !summarize {
        return Err(bad(
            Some(id),
            "a plain document needs a task: run with --task summarize".into(),
        ));
    }
    Ok(Item {
        line,
        id,
        task: Task::Document {
            text: text.to_string(),
        },
    })
}

/// An id from a string or a number (numbers are kept as their JSON text).
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_both_formats_and_reports_bad_lines_with_numbers() {
        let text = concat!(
            r#"{"custom_id":"a","method":"POST","url":"/v1/completions","body":{"prompt":"x"}}"#,
            "\n\n",
            r#"{"id":7,"text":"hello"}"#,
            "\nnot json\n",
            r#"{"custom_id":"b","method":"GET","url":"/v1/completions","body":{}}"#,
            "\n"
        );
        let input = parse_input(text, true).unwrap();
        assert_eq!(input.items.len(), 2);
        assert_eq!(input.items[1].id, "7");
        assert_eq!(input.items[1].line, 3);
        let lines: Vec<usize> = input.invalid.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![4, 5]);
    }

    #[test]
    fn duplicate_ids_are_refused_with_both_lines() {
        let text = "{\"id\":\"x\",\"text\":\"a\"}\n{\"id\":\"y\",\"text\":\"b\"}\n{\"id\":\"x\",\"text\":\"c\"}\n";
        match parse_input(text, true) {
            Err(BatchError::DuplicateId { id, first, second }) => {
                assert_eq!((id.as_str(), first, second), ("x", 1, 3));
            }
            other => panic!("expected a duplicate-id error, got {other:?}"),
        }
    }
}
