use super::*;

fn spec(name: &str, parameters: Value) -> ToolSpec {
    serde_json::from_value(json!({
        "type": "function",
        "function": {"name": name, "description": "d", "parameters": parameters},
    }))
    .unwrap()
}

fn param(e: ServerError) -> String {
    match e {
        ServerError::InvalidRequest { param, .. } => param.unwrap_or_default(),
        other => panic!("not a 400: {other:?}"),
    }
}

#[test]
fn tool_choice_forms_are_read_and_bad_ones_named() {
    let tools = [
        spec("f", json!({"type": "object"})),
        spec("g", json!({"type": "object"})),
    ];
    let p = |c: Value| plan(Some(&tools), Some(&c), None);
    assert!(p(json!("none")).unwrap().is_none());
    assert_eq!(p(json!("auto")).unwrap().unwrap().choice, ToolChoice::Auto);
    assert_eq!(
        p(json!("required")).unwrap().unwrap().choice,
        ToolChoice::Required
    );
    let named = json!({"type": "function", "function": {"name": "g"}});
    assert_eq!(
        p(named).unwrap().unwrap().choice,
        ToolChoice::Named("g".into())
    );
    assert_eq!(param(p(json!("sometimes")).unwrap_err()), "tool_choice");
    let missing = json!({"type": "function", "function": {"name": "h"}});
    assert_eq!(param(p(missing).unwrap_err()), "tool_choice");
    assert_eq!(
        param(plan(None, Some(&json!("required")), None).unwrap_err()),
        "tool_choice"
    );
    assert!(plan(None, None, None).unwrap().is_none());
    let odd: ToolSpec =
        serde_json::from_value(json!({"type": "retrieval", "function": {"name": "x"}})).unwrap();
    assert_eq!(
        param(plan(Some(&[odd]), None, None).unwrap_err()),
        "tools[0].type"
    );
}

#[test]
fn replies_are_read_back_as_calls_or_text() {
    let calls = parse_calls(
        "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>\n<tool_call>{\"name\": \"g\", \"arguments\": {}}</tool_call>",
    )
    .unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].function.name, "f");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].function.arguments).unwrap(),
        json!({"a": 1})
    );
    assert!(calls[0].id.starts_with("call_") && calls[0].id != calls[1].id);
    assert!(parse_calls("Hello there").is_none());
    assert!(parse_calls("<tool_call>{\"name\": \"f\"</tool_call>").is_none());
}

#[test]
fn the_grammar_names_only_the_chosen_function_and_allows_text_only_on_auto() {
    let tools = [
        spec("f", json!({"type": "object"})),
        spec("g", json!({"type": "object"})),
    ];
    let named = json!({"type": "function", "function": {"name": "g"}});
    let Grammar::Lark(g) = plan(Some(&tools), Some(&named), None)
        .unwrap()
        .unwrap()
        .grammar()
    else {
        panic!("not lark")
    };
    assert!(g.contains("\\\"g\\\"") && !g.contains("\\\"f\\\""), "{g}");
    assert!(!g.contains("TEXT"), "{g}");
    let Grammar::Lark(g) = plan(Some(&tools), None, Some(false))
        .unwrap()
        .unwrap()
        .grammar()
    else {
        panic!("not lark")
    };
    assert!(
        g.contains("start: calls | TEXT") && g.contains("calls: call\n"),
        "{g}"
    );
}

#[test]
fn history_calls_and_results_render_in_the_reply_format() {
    let call: InputToolCall = serde_json::from_value(json!({
        "id": "call_1", "type": "function",
        "function": {"name": "f", "arguments": "{\"a\": 2}"},
    }))
    .unwrap();
    let text = render_calls(&[call]);
    assert_eq!(
        parse_calls(&text).unwrap()[0].function.arguments,
        "{\"a\":2}"
    );
    assert!(render_result(Some("call_1"), "22 C").contains("call_1"));
}
