//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls`, the conversation's
//! `tool_calls` and `tool` messages, and the model's reply read back as OpenAI tool calls.
//!
//! The reply format is one `<tool_call>{"name": .., "arguments": {..}}</tool_call>` block
//! per call (Hermes/Qwen style). When the chat template does not render tools itself (it
//! never mentions `tools`, as SmolLM2's), the fallback template is used: a system block
//! listing each function as JSON and this reply format; assistant calls in the history
//! are written back in the same format and tool results as user turns wrapped in
//! `<tool_response>`. Either way the reply is constrained with llguidance: `required` and a
//! named function to calls whose arguments are valid under each function's `parameters`
//! schema; `auto` to either such calls or free text (an alternative of the grammar).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tessera_engine::constraint::{with_layout, Grammar};

use crate::error::ServerError;

/// One entry of `tools`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ToolSpec {
    /// Only `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionSpec,
}

/// A function the model may call.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FunctionSpec {
    /// Its name.
    pub name: String,
    /// What it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of its arguments (absent: any object).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// Accepted; arguments are always validated against `parameters`.
    #[serde(skip_serializing)]
    #[allow(dead_code)] // Parsed so that a mistyped value is refused.
    pub strict: Option<bool>,
}

/// A call an earlier `assistant` message made.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct InputToolCall {
    /// The call's id (answered by a `tool` message's `tool_call_id`).
    pub id: String,
    /// Only `function`.
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    /// The function called.
    pub function: CalledFunction,
}

fn function_kind() -> String {
    "function".into()
}

/// A function name with its arguments as JSON text.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct CalledFunction {
    /// The function's name.
    pub name: String,
    /// Its arguments, a JSON object as text.
    pub arguments: String,
}

/// A call in a response.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ToolCall {
    /// `call_` and a fresh id.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function called.
    pub function: CalledFunction,
}

/// What `tool_choice` allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// Text only; tools are not shown to the model.
    None,
    /// Calls or text.
    Auto,
    /// One or more calls.
    Required,
    /// One call of this function.
    Named(String),
}

/// The tools of a request, checked.
#[derive(Clone, Debug)]
pub struct ToolPlan {
    /// The functions.
    pub functions: Vec<FunctionSpec>,
    /// What the reply may be.
    pub choice: ToolChoice,
    /// Whether one reply may hold several calls.
    pub parallel: bool,
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`; `None` when the reply is
/// plain text (no tools, or `tool_choice: "none"`).
pub fn plan(
    tools: Option<&[ToolSpec]>,
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolPlan>, ServerError> {
    let tools = tools.unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(bad(
                &format!("tools[{i}].type"),
                format!(
                    "Unsupported tool type {:?}: only function tools are supported.",
                    t.kind
                ),
            ));
        }
        if let Some(p) = &t.function.parameters {
            if !p.is_object() {
                return Err(bad(
                    &format!("tools[{i}].function.parameters"),
                    "parameters must be a JSON schema object.",
                ));
            }
        }
    }
    let choice = tool_choice(choice, tools)?;
    if tools.is_empty() || choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(ToolPlan {
        functions: tools.iter().map(|t| t.function.clone()).collect(),
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

fn tool_choice(choice: Option<&Value>, tools: &[ToolSpec]) -> Result<ToolChoice, ServerError> {
    let parsed = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    "tool_choice",
                    format!(
                    "Unknown tool_choice {other:?}: use none, auto, required or a named function."
                ),
                ))
            }
        },
        Some(v) => {
            let name = v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad(
                        "tool_choice",
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                    )
                })?;
            if !tools.iter().any(|t| t.function.name == name) {
                return Err(bad(
                    "tool_choice",
                    format!("tool_choice names {name:?}, which is not in tools."),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
    };
    if tools.is_empty() && matches!(parsed, ToolChoice::Required | ToolChoice::Named(_)) {
        return Err(bad(
            "tool_choice",
            "tool_choice asks for a call but no tools are given.",
        ));
    }
    Ok(parsed)
}

impl ToolPlan {
    /// The fallback template's system block: the functions as JSON and the reply format.
    pub fn system_block(&self) -> String {
        let mut s = String::from(
            "You can call functions. To call one, reply with only\n\
             <tool_call>{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}</tool_call>\n",
        );
        if self.parallel {
            s.push_str("(one block per call, one call per line). ");
        }
        s.push_str("The functions are:\n");
        for f in &self.functions {
            s.push_str(&serde_json::to_string(f).unwrap_or_default());
            s.push('\n');
        }
        s
    }

    /// The grammar of the reply.
    pub fn grammar(&self) -> Grammar {
        let mut rules = Vec::new();
        let mut names = Vec::new();
        for (i, f) in self.functions.iter().enumerate() {
            if matches!(&self.choice, ToolChoice::Named(n) if *n != f.name) {
                continue;
            }
            let params = with_layout(f.parameters.as_ref().unwrap_or(&json!({"type": "object"})));
            let head = format!(
                "{{\"name\": {}, \"arguments\": ",
                serde_json::to_string(&f.name).unwrap_or_default()
            );
            rules.push(format!(
                "fn_{i}: {} %json {} \"}}\"",
                serde_json::to_string(&head).unwrap_or_default(),
                params
            ));
            names.push(format!("fn_{i}"));
        }
        let calls = if self.parallel && !matches!(self.choice, ToolChoice::Named(_)) {
            "calls: call (\"\\n\" call)*"
        } else {
            "calls: call"
        };
        let start = if self.choice == ToolChoice::Auto {
            "start: calls | TEXT\nTEXT: /[^<](.|\\n)*/"
        } else {
            "start: calls"
        };
        Grammar::Lark(format!(
            "{start}\n{calls}\ncall: \"<tool_call>\" body \"</tool_call>\"\nbody: {}\n{}\n",
            names.join(" | "),
            rules.join("\n")
        ))
    }
}

/// The calls in a reply that starts with a `<tool_call>` block (`None`: a text reply).
pub fn parse_calls(text: &str) -> Option<Vec<ToolCall>> {
    let mut rest = text.trim_start();
    if !rest.starts_with("<tool_call>") {
        return None;
    }
    let mut calls = Vec::new();
    while let Some(after) = rest.trim_start().strip_prefix("<tool_call>") {
        let (body, tail) = after.split_once("</tool_call>")?;
        let v: Value = serde_json::from_str(body).ok()?;
        let name = v.get("name")?.as_str()?.to_string();
        let arguments = serde_json::to_string(v.get("arguments")?).ok()?;
        calls.push(ToolCall {
            id: format!("call_{}", crate::routes::fresh_id()),
            kind: "function",
            function: CalledFunction { name, arguments },
        });
        rest = tail;
    }
    (!calls.is_empty()).then_some(calls)
}

/// A fallback rendering of an `assistant` message's calls, as the model would write them.
pub fn render_calls(calls: &[InputToolCall]) -> String {
    calls
        .iter()
        .map(|c| {
            let args: Value = serde_json::from_str(&c.function.arguments)
                .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
            format!(
                "<tool_call>{}</tool_call>",
                json!({"name": c.function.name, "arguments": args})
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fallback rendering of a `tool` message's result.
pub fn render_result(call_id: Option<&str>, content: &str) -> String {
    match call_id {
        Some(id) => format!(
            "<tool_response>{}</tool_response>",
            json!({"tool_call_id": id, "content": content})
        ),
        None => format!(
            "<tool_response>{}</tool_response>",
            json!({"content": content})
        ),
    }
}

fn bad(field: &str, message: impl Into<String>) -> ServerError {
    ServerError::invalid(Some(field.to_string()), message)
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
