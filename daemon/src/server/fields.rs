//! The request fields this server does not implement. Fields OpenAI or vLLM define but we do not
//! implement are refused with a 400 naming them (unless they hold their harmless default), so a
//! client never gets an answer that silently ignored what it asked for. Fields nobody defines are
//! accepted and logged, as vLLM does (clients add their own bookkeeping fields).

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::error::ApiError;

/// Known fields we do not implement, each with the values that ask for nothing (accepted).
fn unsupported(endpoint: Endpoint) -> Vec<(&'static str, Vec<Json>)> {
    let mut fields = vec![
        // OpenAI
        ("audio", vec![]),
        ("modalities", vec![json!(["text"])]),
        ("prediction", vec![]),
        ("web_search_options", vec![]),
        ("functions", vec![]),
        ("function_call", vec![json!("none")]),
        ("store", vec![json!(false)]),
        ("metadata", vec![]),
        ("reasoning_effort", vec![]),
        ("verbosity", vec![]),
        ("service_tier", vec![json!("auto"), json!("default")]),
        // vLLM's extra sampling and prompt fields
        ("best_of", vec![json!(1)]),
        ("use_beam_search", vec![json!(false)]),
        ("length_penalty", vec![json!(1), json!(1.0)]),
        ("include_stop_str_in_output", vec![json!(false)]),
        ("spaces_between_special_tokens", vec![json!(true)]),
        ("truncate_prompt_tokens", vec![]),
        ("prompt_logprobs", vec![]),
        ("allowed_token_ids", vec![]),
        ("bad_words", vec![json!([])]),
        ("logits_processors", vec![]),
        ("return_tokens_as_token_ids", vec![json!(false)]),
        ("return_token_ids", vec![json!(false)]),
        ("structural_tag", vec![]),
        ("priority", vec![json!(0)]),
        ("kv_transfer_params", vec![]),
        ("vllm_xargs", vec![]),
        ("cache_salt", vec![]),
        ("mm_processor_kwargs", vec![]),
        ("add_special_tokens", vec![]),
    ];
    match endpoint {
        Endpoint::Chat => fields.extend([
            ("add_generation_prompt", vec![json!(true)]),
            ("continue_final_message", vec![json!(false)]),
            ("documents", vec![]),
            ("chat_template", vec![]),
            ("chat_template_kwargs", vec![json!({})]),
            ("include_reasoning", vec![json!(false)]),
        ]),
        Endpoint::Completions => fields.extend([("suffix", vec![json!("")])]),
    }
    fields
}

/// Fields both endpoints take that carry nothing to act on (OpenAI's end-user id and cache
/// routing hints): accepted silently.
const HARMLESS: &[&str] = &[
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "request_id",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// Refuses the first known-but-unimplemented field that asks for something; logs unknown ones.
pub fn check_other_fields(
    endpoint: Endpoint,
    other: &BTreeMap<String, Json>,
) -> Result<(), ApiError> {
    let table = unsupported(endpoint);
    let mut unknown = Vec::new();
    for (name, value) in other {
        if value.is_null() || HARMLESS.contains(&name.as_str()) {
            continue;
        }
        match table.iter().find(|(known, _)| known == name) {
            Some((_, harmless)) if harmless.contains(value) => {}
            Some(_) => {
                return Err(ApiError::invalid_param(
                    name,
                    format!("`{name}` is not supported by this server"),
                ));
            }
            None => unknown.push(name.as_str()),
        }
    }
    if !unknown.is_empty() {
        tracing::warn!(
            fields = ?unknown,
            "the request has fields this server does not know; they are ignored"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(json: Json) -> BTreeMap<String, Json> {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn known_unsupported_fields_are_refused_by_name() {
        for (endpoint, body, param) in [
            (
                Endpoint::Chat,
                json!({"audio": {"voice": "alloy", "format": "mp3"}}),
                "audio",
            ),
            (
                Endpoint::Chat,
                json!({"modalities": ["text", "audio"]}),
                "modalities",
            ),
            (
                Endpoint::Chat,
                json!({"prediction": {"type": "content", "content": "x"}}),
                "prediction",
            ),
            (
                Endpoint::Chat,
                json!({"functions": [{"name": "f"}]}),
                "functions",
            ),
            (
                Endpoint::Chat,
                json!({"use_beam_search": true}),
                "use_beam_search",
            ),
            (Endpoint::Completions, json!({"best_of": 3}), "best_of"),
            (Endpoint::Completions, json!({"suffix": "end"}), "suffix"),
            (
                Endpoint::Chat,
                json!({"chat_template": "{{ x }}"}),
                "chat_template",
            ),
        ] {
            let err = check_other_fields(endpoint, &other(body.clone())).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{body}");
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn defaults_nulls_harmless_and_unknown_fields_pass() {
        let body = json!({
            "modalities": ["text"], "best_of": 1, "store": false, "audio": null, "user": "u-1",
            "add_generation_prompt": true, "my_tracing_tag": "abc", "service_tier": "auto",
        });
        assert!(check_other_fields(Endpoint::Chat, &other(body)).is_ok());
        // Chat-only fields are unknown (logged, accepted) on completions.
        assert!(
            check_other_fields(Endpoint::Completions, &other(json!({"documents": [1]}))).is_ok()
        );
    }
}
