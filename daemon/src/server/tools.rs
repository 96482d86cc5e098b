//! Tool calls: `tools`, `tool_choice` and `parallel_tool_calls` checked into a [`ToolPlan`];
//! the conversation prepared for the chat template (the template's own `tools` support, or — for
//! a template without one, like SmolLM2's — a system prompt listing the tools and asking for
//! `<tool_call>[…]</tool_call>`); and the model's output turned into OpenAI `tool_calls`, whole
//! or as streamed deltas.
//!
//! As vLLM does: `required` constrains the output to a JSON list of `{"name", "parameters"}`
//! calls and a named function to that function's arguments (its JSON schema); `auto` leaves the
//! output free and parses `<tool_call>` blocks (Hermes, Qwen, SmolLM2) or Llama 3.1's JSON calls
//! (`{"name": …, "parameters": …}`); `none` never parses.

use serde_json::{Value as Json, json};

use super::error::ApiError;
use super::protocol::{
    ChatMessageIn, FunctionCallDelta, FunctionCallOut, ToolCallDelta, ToolCallOut, ToolIn,
};
use crate::guide::GuideSpec;
use crate::tokenizer::ChatMessage;

/// Tools per request at most (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's tools and what to do with them.
#[derive(Debug, Clone)]
pub struct ToolPlan {
    pub tools: Vec<ToolIn>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

impl ToolPlan {
    /// Checks the fields; `None` when the request has no tools and no `tool_choice` needing them.
    pub fn from_request(
        tools: Option<Vec<ToolIn>>,
        tool_choice: Option<&Json>,
        parallel: Option<bool>,
    ) -> Result<Option<Self>, ApiError> {
        let tools = tools.unwrap_or_default();
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::invalid_param(
                "tools",
                format!(
                    "{} tools given; at most {MAX_TOOLS} are allowed",
                    tools.len()
                ),
            ));
        }
        for (i, tool) in tools.iter().enumerate() {
            if tool.kind != "function" {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!("tools[{i}].type must be `function`, not `{}`", tool.kind),
                ));
            }
            if tool.function.name.is_empty() {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!("tools[{i}].function.name is empty"),
                ));
            }
            if tool
                .function
                .parameters
                .as_ref()
                .is_some_and(|p| !p.is_object())
            {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!("tools[{i}].function.parameters must be a JSON schema object"),
                ));
            }
            if tools[..i]
                .iter()
                .any(|t| t.function.name == tool.function.name)
            {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!("two tools are named `{}`", tool.function.name),
                ));
            }
        }
        let choice = match tool_choice {
            None | Some(Json::Null) => ToolChoice::Auto,
            Some(Json::String(mode)) => match mode.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!(
                            "`tool_choice` must be `none`, `auto`, `required` or a function, not `{other}`"
                        ),
                    ));
                }
            },
            Some(named) => {
                let name = (named.get("type").and_then(Json::as_str) == Some("function"))
                    .then(|| named.pointer("/function/name").and_then(Json::as_str))
                    .flatten()
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            "tool_choice",
                            "a named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": …}}",
                        )
                    })?;
                if !tools.iter().any(|t| t.function.name == name) {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!("`tool_choice` names `{name}`, which is not in `tools`"),
                    ));
                }
                ToolChoice::Named(name.to_owned())
            }
        };
        if tools.is_empty() {
            return match choice {
                ToolChoice::None | ToolChoice::Auto => Ok(None),
                _ => Err(ApiError::invalid_param(
                    "tool_choice",
                    "`tool_choice` asks for a call but `tools` is empty",
                )),
            };
        }
        Ok(Some(Self {
            tools,
            choice,
            parallel: parallel.unwrap_or(true),
        }))
    }

    /// The constraint a forced call puts on the output (`required` or a named function).
    pub fn guide_spec(&self) -> Option<GuideSpec> {
        let parameters = |t: &ToolIn| {
            t.function
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object"}))
        };
        match &self.choice {
            ToolChoice::None | ToolChoice::Auto => None,
            ToolChoice::Named(name) => {
                let tool = self.tools.iter().find(|t| &t.function.name == name)?;
                Some(GuideSpec::JsonSchema {
                    schema: parameters(tool),
                    strict: tool.function.strict.unwrap_or(false),
                })
            }
            ToolChoice::Required => {
                let calls: Vec<Json> = (self.tools.iter())
                    .map(|t| {
                        json!({
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "enum": [t.function.name]},
                                "parameters": parameters(t),
                            },
                            "required": ["name", "parameters"],
                            "additionalProperties": false,
                        })
                    })
                    .collect();
                let mut schema = json!({"type": "array", "minItems": 1, "items": {"anyOf": calls}});
                if !self.parallel {
                    schema["maxItems"] = json!(1);
                }
                Some(GuideSpec::JsonSchema {
                    schema,
                    strict: false,
                })
            }
        }
    }

    /// The tools as chat templates take them (`[{"type": "function", "function": {…}}]`).
    pub fn template_tools(&self) -> Vec<Json> {
        self.tools
            .iter()
            .map(|t| serde_json::to_value(t).unwrap_or(Json::Null))
            .collect()
    }

    /// The output of a choice as content and calls (none: the output is all content).
    pub fn parse(&self, text: &str) -> (Option<String>, Vec<ToolCallOut>) {
        let (before, calls) = match &self.choice {
            ToolChoice::None => (None, None),
            ToolChoice::Named(name) => (None, Some(vec![(name.clone(), text.trim().to_owned())])),
            ToolChoice::Required => (
                None,
                serde_json::from_str::<Json>(text)
                    .ok()
                    .and_then(|v| calls_of(&v)),
            ),
            ToolChoice::Auto => match parse_free(text) {
                Some((before, calls)) => (Some(before), Some(calls)),
                None => (None, None),
            },
        };
        match calls {
            Some(mut calls) if !calls.is_empty() => {
                if !self.parallel {
                    calls.truncate(1);
                }
                let content = before.filter(|c| !c.trim().is_empty());
                let calls = (calls.into_iter())
                    .map(|(name, arguments)| call(name, arguments))
                    .collect();
                (content, calls)
            }
            _ => (Some(text.to_owned()), Vec::new()),
        }
    }
}

fn call(name: String, arguments: String) -> ToolCallOut {
    ToolCallOut {
        id: call_id(),
        kind: "function",
        function: FunctionCallOut { name, arguments },
    }
}

/// `chatcmpl-tool-` and 16 random hex digits, as vLLM names calls.
fn call_id() -> String {
    format!("chatcmpl-tool-{:016x}", rand::random::<u64>())
}

/// Calls in free output: `<tool_call>` blocks, else the whole output as JSON call(s) (Llama 3.1,
/// after an optional `<|python_tag|>`, several separated by `;`). The text before the first call.
fn parse_free(text: &str) -> Option<(String, Vec<(String, String)>)> {
    if let Some(start) = text.find(OPEN) {
        let mut calls = Vec::new();
        let mut rest = &text[start..];
        while let Some(open) = rest.find(OPEN) {
            let body_start = open + OPEN.len();
            let (body, next) = match rest[body_start..].find(CLOSE) {
                Some(end) => (
                    &rest[body_start..body_start + end],
                    &rest[body_start + end + CLOSE.len()..],
                ),
                None => (&rest[body_start..], ""),
            };
            calls.extend(calls_of(&serde_json::from_str(body.trim()).ok()?)?);
            rest = next;
        }
        return Some((text[..start].to_owned(), calls));
    }
    let body = text.trim_start();
    let body = body.strip_prefix("<|python_tag|>").unwrap_or(body).trim();
    if !body.starts_with('{') && !body.starts_with('[') {
        return None;
    }
    if let Ok(value) = serde_json::from_str::<Json>(body) {
        return Some((String::new(), calls_of(&value)?));
    }
    let mut calls = Vec::new();
    for part in body.split(';') {
        calls.extend(calls_of(&serde_json::from_str(part.trim()).ok()?)?);
    }
    Some((String::new(), calls))
}

/// `{"name", "arguments" | "parameters"}` or a list of them → `(name, arguments as JSON text)`.
fn calls_of(value: &Json) -> Option<Vec<(String, String)>> {
    let one = |v: &Json| {
        let name = v.get("name")?.as_str()?.to_owned();
        let arguments = v
            .get("arguments")
            .or_else(|| v.get("parameters"))
            .cloned()
            .unwrap_or(json!({}));
        let arguments = match arguments {
            Json::String(s) => s,
            other => other.to_string(),
        };
        Some((name, arguments))
    };
    match value {
        Json::Array(items) => items.iter().map(one).collect(),
        Json::Object(_) => Some(vec![one(value)?]),
        _ => None,
    }
}

/// The conversation for the template, and the `tools` variable to render it with. A template
/// that does not read `tools` gets them in a system prompt and sees earlier calls as
/// `<tool_call>[…]</tool_call>` text.
pub fn prepare(
    messages: Vec<ChatMessage>,
    plan: Option<&ToolPlan>,
    template_reads_tools: bool,
) -> (Vec<ChatMessage>, Option<Vec<Json>>) {
    if template_reads_tools {
        return (messages, plan.map(ToolPlan::template_tools));
    }
    let mut messages: Vec<ChatMessage> = messages
        .into_iter()
        .map(|mut m| {
            if let Some(calls) = m.tool_calls.take() {
                let listed: Vec<Json> = calls
                    .iter()
                    .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                    .collect();
                m.content.push_str(&format!("{OPEN}{}{CLOSE}", Json::Array(listed)));
            }
            m
        })
        .collect();
    if let Some(plan) = plan.filter(|p| p.choice != ToolChoice::None) {
        let prompt = tools_prompt(&plan.template_tools());
        match messages.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{prompt}", first.content);
            }
            _ => messages.insert(0, ChatMessage::new("system", prompt)),
        }
    }
    (messages, None)
}

/// The system prompt that lists tools for a template without tool support (SmolLM2's format).
fn tools_prompt(tools: &[Json]) -> String {
    let listed: Vec<Json> = tools.iter().map(|t| t["function"].clone()).collect();
    format!(
        "You may call functions to answer. The functions you can call, with JSON schemas of \
         their arguments:\n<tools>{}</tools>\n\nTo call functions, reply with nothing but a JSON \
         list of calls between tags, like this:\n{OPEN}[{{\"name\": \"function_name\", \
         \"arguments\": {{\"argument\": \"value\"}}}}]{CLOSE}\nWhen no function is needed, \
         answer in plain text.",
        Json::Array(listed)
    )
}

/// Messages of the request → the template's messages (arguments as objects, as templates
/// expect; text parts joined). Roles and parts are checked; bad ones are a 400 on `messages`.
pub fn chat_messages(messages: Vec<ChatMessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    use super::protocol::MessageContent;
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must not be empty",
        ));
    }
    messages
        .into_iter()
        .map(|m| {
            if !matches!(
                m.role.as_str(),
                "system" | "user" | "assistant" | "tool" | "developer"
            ) {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("unknown role `{}`", m.role),
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t,
                Some(MessageContent::Parts(parts)) => {
                    if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                        return Err(ApiError::invalid_param(
                            "messages",
                            format!("content part `{}` is not supported", p.kind),
                        ));
                    }
                    parts.into_iter().filter_map(|p| p.text).collect()
                }
            };
            let tool_calls = m.tool_calls.map(|calls| {
                calls
                    .into_iter()
                    .map(|c| {
                        let arguments = match c.function.arguments {
                            Json::String(s) => serde_json::from_str(&s).unwrap_or(Json::String(s)),
                            other => other,
                        };
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.function.name, "arguments": arguments},
                        })
                    })
                    .collect()
            });
            Ok(ChatMessage {
                role: m.role,
                content,
                name: m.name,
                tool_calls,
                tool_call_id: m.tool_call_id,
            })
        })
        .collect()
}

/// What a streamed choice sends for a piece of its output.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Content(String),
    Calls(Vec<ToolCallDelta>),
}

/// One streamed choice's output under a tool plan: text streams as content until a call may
/// have begun; a call streams as `tool_calls` deltas (a named function's arguments as they come,
/// others once whole).
#[derive(Debug)]
pub struct ToolStream {
    plan: ToolPlan,
    /// Output not sent yet.
    held: String,
    /// Whether content was sent (a Llama JSON call can only start the output).
    sent_content: bool,
    /// A named call's id, once its first delta went out.
    named_id: Option<String>,
}

impl ToolStream {
    pub fn new(plan: ToolPlan) -> Self {
        Self {
            plan,
            held: String::new(),
            sent_content: false,
            named_id: None,
        }
    }

    /// The pieces to send for `text`, the next piece of output.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        match &self.plan.choice {
            ToolChoice::None => vec![Piece::Content(text.to_owned())],
            ToolChoice::Named(name) => {
                let first = self.named_id.is_none();
                let id = self.named_id.get_or_insert_with(call_id).clone();
                vec![Piece::Calls(vec![ToolCallDelta {
                    index: 0,
                    id: first.then_some(id),
                    kind: first.then_some("function"),
                    function: FunctionCallDelta {
                        name: first.then(|| name.clone()),
                        arguments: text.to_owned(),
                    },
                }])]
            }
            ToolChoice::Required => {
                self.held.push_str(text);
                Vec::new()
            }
            ToolChoice::Auto => {
                self.held.push_str(text);
                let start = self.held.trim_start();
                let maybe_json =
                    !self.sent_content && (start.is_empty() || start.starts_with(['{', '[', '<']));
                if maybe_json || self.held.contains(OPEN) {
                    return Vec::new();
                }
                // Keep back a tail that may be the start of `<tool_call>`.
                let keep = (1..OPEN.len())
                    .rev()
                    .find(|&n| self.held.ends_with(&OPEN[..n]))
                    .unwrap_or(0);
                let cut = self.held.len() - keep;
                if cut == 0 {
                    return Vec::new();
                }
                self.sent_content = true;
                let out: String = self.held.drain(..cut).collect();
                vec![Piece::Content(out)]
            }
        }
    }

    /// The pieces left at the end, and whether the choice called tools.
    pub fn finish(&mut self) -> (Vec<Piece>, bool) {
        if let ToolChoice::Named(_) = self.plan.choice {
            return (Vec::new(), self.named_id.is_some());
        }
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return (Vec::new(), false);
        }
        let (content, calls) = self.plan.parse(&held);
        let mut pieces: Vec<Piece> = content.into_iter().map(Piece::Content).collect();
        let called = !calls.is_empty();
        if called {
            let deltas = (calls.into_iter().enumerate())
                .map(|(index, c)| ToolCallDelta {
                    index,
                    id: Some(c.id),
                    kind: Some("function"),
                    function: FunctionCallDelta {
                        name: Some(c.function.name),
                        arguments: c.function.arguments,
                    },
                })
                .collect();
            pieces.push(Piece::Calls(deltas));
        }
        (pieces, called)
    }
}

#[cfg(test)]
mod tests;
