//! A request's output constraint: OpenAI's `response_format` or vLLM's `guided_json`,
//! `guided_regex`, `guided_choice`, `guided_grammar` and `structured_outputs` object, checked
//! into one [`GuideSpec`] — at most one constraint per request, every bad value a 400 naming
//! its field. Compiling it (schema errors are 400s too) happens on the blocking pool.

use serde_json::{Map, Value as Json};

use super::error::ApiError;
use super::protocol::StructuredFields;
use crate::guide::GuideSpec;

/// The constraint the fields ask for (`None`: free text) and the field that asked for it.
pub fn guide_spec(f: &StructuredFields) -> Result<Option<(GuideSpec, String)>, ApiError> {
    let mut found: Vec<(GuideSpec, String)> = Vec::new();
    if let Some(format) = f.response_format.as_ref().filter(|v| !v.is_null()) {
        found.extend(response_format(format)?.map(|s| (s, "response_format".to_owned())));
    }
    if let Some(schema) = f.guided_json.as_ref().filter(|v| !v.is_null()) {
        found.push((
            json_schema(schema, false, "guided_json")?,
            "guided_json".into(),
        ));
    }
    if let Some(rx) = f.guided_regex.as_ref().filter(|v| !v.is_null()) {
        found.push((
            GuideSpec::Regex(string(rx, "guided_regex")?),
            "guided_regex".into(),
        ));
    }
    if let Some(choice) = f.guided_choice.as_ref().filter(|v| !v.is_null()) {
        found.push((
            GuideSpec::Choice(choices(choice, "guided_choice")?),
            "guided_choice".into(),
        ));
    }
    if let Some(grammar) = f.guided_grammar.as_ref().filter(|v| !v.is_null()) {
        found.push((
            GuideSpec::Lark(string(grammar, "guided_grammar")?),
            "guided_grammar".into(),
        ));
    }
    if let Some(so) = f.structured_outputs.as_ref().filter(|v| !v.is_null()) {
        found.extend(structured_outputs(so)?);
    }
    if let Some(backend) = f.guided_decoding_backend.as_ref().filter(|v| !v.is_null()) {
        let backend = string(backend, "guided_decoding_backend")?;
        if !matches!(backend.as_str(), "auto" | "guidance" | "llguidance") {
            return Err(ApiError::invalid_param(
                "guided_decoding_backend",
                format!(
                    "this server's structured outputs run on llguidance (`guidance`), not `{backend}`"
                ),
            ));
        }
    }
    if f.guided_whitespace_pattern
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return Err(ApiError::invalid_param(
            "guided_whitespace_pattern",
            "`guided_whitespace_pattern` is not supported; set `x-guidance.whitespace_pattern` in the schema",
        ));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|(_, field)| field.as_str()).collect();
        return Err(ApiError::invalid_param(
            names[1],
            format!(
                "only one output constraint per request; got {}",
                names.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}

/// `{"type": "text" | "json_object" | "json_schema", "json_schema": {…}}`.
fn response_format(format: &Json) -> Result<Option<GuideSpec>, ApiError> {
    let param = "response_format";
    let object = format
        .as_object()
        .ok_or_else(|| ApiError::invalid_param(param, "`response_format` must be an object"))?;
    match object.get("type").and_then(Json::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GuideSpec::JsonObject)),
        Some("json_schema") => {
            let inner = object
                .get("json_schema")
                .and_then(Json::as_object)
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "response_format.json_schema",
                        "`response_format.json_schema` must be an object with `name` and `schema`",
                    )
                })?;
            let strict = match inner.get("strict") {
                None | Some(Json::Null) => false,
                Some(Json::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema.strict",
                        "`strict` must be a boolean",
                    ));
                }
            };
            // OpenAI's `schema` (vLLM also reads `json_schema` inside it).
            let schema = inner
                .get("schema")
                .or_else(|| inner.get("json_schema"))
                .cloned()
                .unwrap_or_else(|| Json::Object(Map::new()));
            Ok(Some(json_schema(
                &schema,
                strict,
                "response_format.json_schema.schema",
            )?))
        }
        Some(other) => Err(ApiError::invalid_param(
            "response_format.type",
            format!(
                "`response_format.type` must be `text`, `json_object` or `json_schema`, not `{other}`"
            ),
        )),
        None => Err(ApiError::invalid_param(
            "response_format.type",
            "`response_format.type` is required",
        )),
    }
}

/// vLLM's `structured_outputs`: `json`, `regex`, `choice`, `grammar`, `json_object`.
fn structured_outputs(value: &Json) -> Result<Vec<(GuideSpec, String)>, ApiError> {
    let object = value.as_object().ok_or_else(|| {
        ApiError::invalid_param(
            "structured_outputs",
            "`structured_outputs` must be an object",
        )
    })?;
    let mut found = Vec::new();
    for (key, v) in object {
        if v.is_null() {
            continue;
        }
        let field = format!("structured_outputs.{key}");
        let spec = match key.as_str() {
            "json" => json_schema(v, false, &field)?,
            "regex" => GuideSpec::Regex(string(v, &field)?),
            "choice" => GuideSpec::Choice(choices(v, &field)?),
            "grammar" => GuideSpec::Lark(string(v, &field)?),
            "json_object" if v == &Json::Bool(true) => GuideSpec::JsonObject,
            "json_object" | "disable_fallback" | "disable_additional_properties" => continue,
            "disable_any_whitespace" | "whitespace_pattern" | "structural_tag" => {
                if v == &Json::Bool(false) {
                    continue;
                }
                return Err(ApiError::invalid_param(
                    &field,
                    format!("`{field}` is not supported by this server"),
                ));
            }
            _ => {
                return Err(ApiError::invalid_param(
                    &field,
                    format!("`{field}` is not a structured-outputs option"),
                ));
            }
        };
        found.push((spec, field));
    }
    Ok(found)
}

/// A schema as an object, or as a string holding one (vLLM takes both).
fn json_schema(value: &Json, strict: bool, param: &str) -> Result<GuideSpec, ApiError> {
    let schema = match value {
        Json::String(text) => serde_json::from_str(text).map_err(|e| {
            ApiError::invalid_param(param, format!("`{param}` is not valid JSON: {e}"))
        })?,
        Json::Object(_) | Json::Bool(true) => value.clone(),
        _ => {
            return Err(ApiError::invalid_param(
                param,
                format!("`{param}` must be a JSON schema object"),
            ));
        }
    };
    Ok(GuideSpec::JsonSchema { schema, strict })
}

fn string(value: &Json, param: &str) -> Result<String, ApiError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid_param(param, format!("`{param}` must be a string")))
}

fn choices(value: &Json, param: &str) -> Result<Vec<String>, ApiError> {
    let list = value.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
        ApiError::invalid_param(
            param,
            format!("`{param}` must be a non-empty list of strings"),
        )
    })?;
    list.iter().map(|v| string(v, param)).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(body: Json) -> Result<Option<(GuideSpec, String)>, ApiError> {
        guide_spec(&serde_json::from_value(body).unwrap())
    }

    #[test]
    fn each_form_becomes_its_constraint() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let strict = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}});
        for (body, want) in [
            (json!({}), None),
            (json!({"response_format": {"type": "text"}}), None),
            (
                json!({"response_format": {"type": "json_object"}}),
                Some(GuideSpec::JsonObject),
            ),
            (
                json!({"response_format": strict}),
                Some(GuideSpec::JsonSchema {
                    schema: schema.clone(),
                    strict: true,
                }),
            ),
            (
                json!({"guided_json": schema.to_string()}),
                Some(GuideSpec::JsonSchema {
                    schema: schema.clone(),
                    strict: false,
                }),
            ),
            (
                json!({"guided_regex": "a+"}),
                Some(GuideSpec::Regex("a+".into())),
            ),
            (
                json!({"guided_choice": ["x", "y"]}),
                Some(GuideSpec::Choice(vec!["x".into(), "y".into()])),
            ),
            (
                json!({"guided_grammar": "start: \"a\""}),
                Some(GuideSpec::Lark("start: \"a\"".into())),
            ),
            (
                json!({"structured_outputs": {"choice": ["x"]}}),
                Some(GuideSpec::Choice(vec!["x".into()])),
            ),
            (
                json!({"structured_outputs": {"json_object": true}}),
                Some(GuideSpec::JsonObject),
            ),
            (
                json!({"guided_regex": "b", "guided_decoding_backend": "guidance"}),
                Some(GuideSpec::Regex("b".into())),
            ),
        ] {
            assert_eq!(spec(body.clone()).unwrap().map(|(s, _)| s), want, "{body}");
        }
    }

    #[test]
    fn bad_constraints_name_their_field() {
        for (body, param) in [
            (json!({"response_format": "json"}), "response_format"),
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format.type",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}),
                "response_format.json_schema.schema",
            ),
            (json!({"guided_json": "{not json"}), "guided_json"),
            (json!({"guided_regex": 5}), "guided_regex"),
            (json!({"guided_choice": []}), "guided_choice"),
            (json!({"guided_choice": ["a", 1]}), "guided_choice"),
            (
                json!({"structured_outputs": {"regex": "a", "color": 1}}),
                "structured_outputs.color",
            ),
            (
                json!({"structured_outputs": {"structural_tag": "{}"}}),
                "structured_outputs.structural_tag",
            ),
            (
                json!({"guided_regex": "a", "guided_choice": ["b"]}),
                "guided_choice",
            ),
            (
                json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
                "guided_regex",
            ),
            (
                json!({"guided_decoding_backend": "xgrammar"}),
                "guided_decoding_backend",
            ),
            (
                json!({"guided_whitespace_pattern": "\\s*"}),
                "guided_whitespace_pattern",
            ),
        ] {
            let err = spec(body.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {err:?}");
            assert_eq!(err.status, 400);
        }
    }
}
