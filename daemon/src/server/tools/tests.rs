use serde_json::json;

use super::*;

fn plan(choice: Json, parallel: Option<bool>) -> Result<Option<ToolPlan>, ApiError> {
    let tools: Vec<ToolIn> = serde_json::from_value(json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]))
    .unwrap();
    ToolPlan::from_request(Some(tools), Some(&choice), parallel)
}

#[test]
fn tool_choice_forms_and_errors() {
    assert_eq!(
        plan(json!("auto"), None).unwrap().unwrap().choice,
        ToolChoice::Auto
    );
    assert_eq!(
        plan(json!("none"), None).unwrap().unwrap().choice,
        ToolChoice::None
    );
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    assert_eq!(
        plan(named, None).unwrap().unwrap().choice,
        ToolChoice::Named("get_time".into())
    );
    for (choice, param) in [
        (json!("sometimes"), "tool_choice"),
        (
            json!({"type": "function", "function": {"name": "nope"}}),
            "tool_choice",
        ),
        (json!({"type": "function"}), "tool_choice"),
    ] {
        let err = plan(choice, None).unwrap_err();
        assert_eq!(err.param.as_deref(), Some(param));
    }
    let err = ToolPlan::from_request(None, Some(&json!("required")), None).unwrap_err();
    assert_eq!(err.param.as_deref(), Some("tool_choice"));
    assert!(
        ToolPlan::from_request(None, Some(&json!("auto")), None)
            .unwrap()
            .is_none()
    );
    let bad: Vec<ToolIn> =
        serde_json::from_value(json!([{"type": "retrieval", "function": {"name": "x"}}])).unwrap();
    assert_eq!(
        ToolPlan::from_request(Some(bad), None, None)
            .unwrap_err()
            .param
            .as_deref(),
        Some("tools")
    );
}

#[test]
fn forced_calls_constrain_the_output() {
    let required = plan(json!("required"), Some(false)).unwrap().unwrap();
    let Some(GuideSpec::JsonSchema { schema, .. }) = required.guide_spec() else {
        panic!("required is a schema");
    };
    assert_eq!(schema["maxItems"], 1);
    assert_eq!(
        schema["items"]["anyOf"][0]["properties"]["name"]["enum"][0],
        "get_weather"
    );
    let named = plan(
        json!({"type": "function", "function": {"name": "get_weather"}}),
        None,
    )
    .unwrap()
    .unwrap();
    let Some(GuideSpec::JsonSchema { schema, .. }) = named.guide_spec() else {
        panic!("named is a schema");
    };
    assert_eq!(schema["required"][0], "city");
    assert!(
        plan(json!("auto"), None)
            .unwrap()
            .unwrap()
            .guide_spec()
            .is_none()
    );
}

#[test]
fn outputs_parse_into_calls() {
    let auto = plan(json!("auto"), None).unwrap().unwrap();
    let names = |text: &str| -> (Option<String>, Vec<(String, Json)>) {
        let (content, calls) = auto.parse(text);
        let calls = calls
            .into_iter()
            .map(|c| {
                (
                    c.function.name,
                    serde_json::from_str(&c.function.arguments).unwrap(),
                )
            })
            .collect();
        (content, calls)
    };
    let weather = ("get_weather".to_owned(), json!({"city": "Paris"}));
    // Hermes / Qwen.
    assert_eq!(
        names(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
        ),
        (None, vec![weather.clone()])
    );
    // SmolLM2's list form, with text before it and no closing tag.
    assert_eq!(
        names(
            "Let me check. <tool_call>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {}}]"
        ),
        (
            Some("Let me check. ".into()),
            vec![weather.clone(), ("get_time".into(), json!({}))]
        )
    );
    // Llama 3.1's JSON, after <|python_tag|>, and two separated by `;`.
    assert_eq!(
        names("<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"),
        (None, vec![weather.clone()])
    );
    assert_eq!(names("{\"name\": \"get_time\", \"parameters\": {}}; {\"name\": \"get_time\", \"parameters\": {}}").1.len(), 2);
    // Plain text and broken calls stay content.
    assert_eq!(
        names("Paris is sunny."),
        (Some("Paris is sunny.".into()), vec![])
    );
    assert_eq!(names("<tool_call>{oops</tool_call>").1, vec![]);
    let required = plan(json!("required"), None).unwrap().unwrap();
    let (content, calls) =
        required.parse(r#"[{"name": "get_weather", "parameters": {"city": "Paris"}}]"#);
    assert_eq!(
        (content, calls[0].function.arguments.as_str()),
        (None, r#"{"city":"Paris"}"#)
    );
    assert!(calls[0].id.starts_with("chatcmpl-tool-"));
    let serial = plan(json!("auto"), Some(false)).unwrap().unwrap();
    assert_eq!(
        serial
            .parse("<tool_call>[{\"name\": \"get_time\"}, {\"name\": \"get_time\"}]</tool_call>")
            .1
            .len(),
        1
    );
}

#[test]
fn auto_streams_text_and_holds_back_calls() {
    let mut stream = ToolStream::new(plan(json!("auto"), None).unwrap().unwrap());
    let mut sent = Vec::new();
    for piece in [
        "Hello",
        " there <tool",
        "_call>[{\"name\": \"get_time\", ",
        "\"arguments\": {}}]</tool_call>",
    ] {
        sent.extend(stream.push(piece));
    }
    assert_eq!(
        sent,
        vec![
            Piece::Content("Hello".into()),
            Piece::Content(" there ".into())
        ]
    );
    let (rest, called) = stream.finish();
    assert!(called);
    let [Piece::Calls(calls)] = rest.as_slice() else {
        panic!("{rest:?}");
    };
    assert_eq!(
        (calls[0].index, calls[0].function.name.as_deref()),
        (0, Some("get_time"))
    );
    // Text that never becomes a call is all sent, at the latest at the end.
    let mut stream = ToolStream::new(plan(json!("auto"), None).unwrap().unwrap());
    let mut text = String::new();
    for piece in ["{not", " a call"] {
        for p in stream.push(piece) {
            let Piece::Content(c) = p else { panic!() };
            text.push_str(&c);
        }
    }
    let (rest, called) = stream.finish();
    assert!(!called);
    assert_eq!(rest, vec![Piece::Content(text + "{not a call")]);
}

#[test]
fn a_named_call_streams_its_arguments_as_they_come() {
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let mut stream = ToolStream::new(plan(named, None).unwrap().unwrap());
    let first = stream.push("{\"city\": ");
    let second = stream.push("\"Paris\"}");
    let [Piece::Calls(a)] = first.as_slice() else {
        panic!()
    };
    let [Piece::Calls(b)] = second.as_slice() else {
        panic!()
    };
    assert!(a[0].id.is_some() && a[0].function.name.as_deref() == Some("get_weather"));
    assert!(b[0].id.is_none() && b[0].function.name.is_none());
    assert_eq!(
        a[0].function.arguments.clone() + &b[0].function.arguments,
        "{\"city\": \"Paris\"}"
    );
    assert_eq!(stream.finish(), (Vec::new(), true));
}

#[test]
fn a_template_without_tools_gets_them_in_a_system_prompt() {
    let p = plan(json!("auto"), None).unwrap().unwrap();
    let messages: Vec<ChatMessageIn> = serde_json::from_value(json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]))
    .unwrap();
    let messages = chat_messages(messages).unwrap();
    assert_eq!(
        messages[1].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    let (plain, tools) = prepare(messages.clone(), Some(&p), false);
    assert!(tools.is_none());
    assert_eq!(plain[0].role, "system");
    assert!(plain[0].content.contains("<tools>") && plain[0].content.contains("get_weather"));
    assert_eq!(
        plain[2].content,
        "<tool_call>[{\"arguments\":{\"city\":\"Paris\"},\"name\":\"get_weather\"}]</tool_call>"
            .replace(
                "{\"arguments\":{\"city\":\"Paris\"},\"name\":\"get_weather\"}",
                &json!({"name": "get_weather", "arguments": {"city": "Paris"}}).to_string()
            )
    );
    assert_eq!(plain[3].tool_call_id.as_deref(), Some("c1"));
    let (same, tools) = prepare(messages.clone(), Some(&p), true);
    assert_eq!(same, messages);
    assert_eq!(tools.unwrap()[1]["function"]["name"], "get_time");
    let none = plan(json!("none"), None).unwrap().unwrap();
    assert_eq!(prepare(messages, Some(&none), false).0[0].role, "user");
}
