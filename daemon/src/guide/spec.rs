//! What a request constrains its output to, and the llguidance grammar for it. JSON is compact
//! by default (`", "` and `": "` separators, no free whitespace: a small model cannot pad an
//! object with newlines forever); a schema's own `x-guidance` options override that.

use llguidance::api::TopLevelGrammar;
use serde_json::{Value as Json, json};

use super::GuideError;

/// An output constraint, as the OpenAI and vLLM request fields express them.
#[derive(Debug, Clone, PartialEq)]
pub enum GuideSpec {
    /// A JSON Schema; `strict` refuses keywords the engine cannot enforce instead of ignoring
    /// them.
    JsonSchema { schema: Json, strict: bool },
    /// Any JSON object (`response_format: json_object`).
    JsonObject,
    /// A regular expression (Rust `regex` syntax) the whole output matches.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect.
    Lark(String),
}

impl GuideSpec {
    pub(super) fn grammar(&self) -> Result<TopLevelGrammar, GuideError> {
        Ok(match self {
            GuideSpec::JsonSchema { schema, strict } => {
                TopLevelGrammar::from_json_schema(with_json_options(schema, *strict)?)
            }
            GuideSpec::JsonObject => TopLevelGrammar::from_json_schema(with_json_options(
                &json!({"type": "object"}),
                false,
            )?),
            GuideSpec::Regex(rx) => TopLevelGrammar::from_regex(rx),
            GuideSpec::Choice(choices) => {
                if choices.is_empty() {
                    return Err(GuideError::Invalid("the list of choices is empty".into()));
                }
                let alternatives: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            GuideSpec::Lark(grammar) => {
                if grammar.trim().is_empty() {
                    return Err(GuideError::Invalid("the grammar is empty".into()));
                }
                TopLevelGrammar::from_lark(grammar.clone())
            }
        })
    }
}

/// `schema` with our JSON layout defaults under `x-guidance` (the schema's own win).
fn with_json_options(schema: &Json, strict: bool) -> Result<Json, GuideError> {
    let mut schema = match schema {
        Json::Object(_) => schema.clone(),
        Json::Bool(true) => json!({}),
        other => {
            return Err(GuideError::Invalid(format!(
                "a JSON schema is an object, not {other}"
            )));
        }
    };
    let mut options = json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "lenient": !strict,
    });
    if let Some(own) = schema.get("x-guidance") {
        llguidance::json_merge(&mut options, own);
    }
    schema["x-guidance"] = options;
    Ok(schema)
}
