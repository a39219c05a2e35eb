//! A chat request's messages as chat-template input: content parts joined, roles
//! checked, and tool calls and results written natively (the template renders them) or
//! in the fallback format of [`crate::tools`].

use serde_json::{json, Value};

use crate::error::ServerError;
use crate::request::{InputMessage, MessageContent};
use crate::tools;

/// The text of a message's content; content parts are joined (text parts only).
pub fn content_text(i: usize, content: Option<&MessageContent>) -> Result<String, ServerError> {
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(t)) => Ok(t.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ServerError::invalid(
                            Some(format!("messages[{i}].content[{j}]")),
                            format!("Unsupported content part of type {:?}: only text parts with a `text` field are supported.", p.kind),
                        ))
                    }
                }
            }
            Ok(text)
        }
    }
}

/// The request's messages as template input (JSON objects). With `native` tools the
/// template gets `tool_calls` and `tool_call_id` as they are; otherwise calls and results
/// are written in the fallback format ([`crate::tools`]) and `system_block` (the tool
/// specs) is added to the system message.
pub fn messages(
    input: &[InputMessage],
    native: bool,
    system_block: Option<String>,
) -> Result<Vec<Value>, ServerError> {
    if input.is_empty() {
        return Err(ServerError::invalid(
            Some("messages".to_string()),
            "messages must hold at least one message.",
        ));
    }
    let mut out = Vec::with_capacity(input.len() + 1);
    for (i, m) in input.iter().enumerate() {
        let role = match m.role.as_str() {
            "developer" => "system",
            r @ ("system" | "user" | "assistant" | "tool") => r,
            other => {
                return Err(ServerError::invalid(
                    Some(format!("messages[{i}].role")),
                    format!(
                    "Unsupported role {other:?}: use system, developer, user, assistant or tool."
                ),
                ))
            }
        };
        let mut content = content_text(i, m.content.as_ref())?;
        let calls = m.tool_calls.as_deref().filter(|c| !c.is_empty());
        if calls.is_some() && role != "assistant" {
            return Err(ServerError::invalid(
                Some(format!("messages[{i}].tool_calls")),
                "Only assistant messages carry tool_calls.",
            ));
        }
        let message = if native {
            let mut msg = json!({"role": role, "content": content});
            if let Some(calls) = calls {
                msg["tool_calls"] = native_calls(calls);
            }
            if let Some(id) = &m.tool_call_id {
                msg["tool_call_id"] = json!(id);
            }
            msg
        } else if role == "tool" {
            json!({"role": "user", "content": tools::render_result(m.tool_call_id.as_deref(), &content)})
        } else {
            if let Some(calls) = calls {
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(&tools::render_calls(calls));
            }
            json!({"role": role, "content": content})
        };
        out.push(message);
    }
    if let Some(block) = system_block {
        match out.first_mut() {
            Some(first) if first["role"] == "system" => {
                let text = format!(
                    "{}\n\n{block}",
                    first["content"].as_str().unwrap_or_default()
                );
                first["content"] = json!(text);
            }
            _ => out.insert(0, json!({"role": "system", "content": block})),
        }
    }
    Ok(out)
}

/// Calls for a template that renders them itself: arguments as objects, as Hugging Face
/// templates expect.
fn native_calls(calls: &[tools::InputToolCall]) -> Value {
    calls
        .iter()
        .map(|c| {
            let args: Value = serde_json::from_str(&c.function.arguments)
                .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
            json!({"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": args}})
        })
        .collect()
}
