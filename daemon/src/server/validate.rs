//! Request validation: every field is checked before anything expensive happens, and each bad
//! value becomes a 400 that names its parameter.

use super::error::ApiError;
use super::protocol::SamplingFields;
use crate::model::sampling::SamplingParams;

/// Logprob alternatives we compute at most per token (OpenAI's limit).
pub const MAX_LOGPROBS: i64 = 20;
/// Choices per request at most.
pub const MAX_N: i64 = 16;
/// Stop strings per request at most (OpenAI allows 4, vLLM sets no limit; every stop string is
/// matched against the output after each token, so a hostile list must not be unbounded).
pub const MAX_STOP_STRINGS: usize = 32;
/// Bytes of one stop string at most.
pub const MAX_STOP_BYTES: usize = 512;
/// `logit_bias` entries at most (OpenAI documents 300 tokens; we take more, not unbounded).
pub const MAX_LOGIT_BIAS: usize = 1024;

/// A request's generation settings after validation.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    /// `None`: until the context is full.
    pub max_tokens: Option<usize>,
    pub min_tokens: usize,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub skip_special_tokens: bool,
}

fn finite(param: &str, v: f64) -> Result<f64, ApiError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be a finite number"),
        ))
    }
}

fn in_range(param: &str, v: f64, lo: f64, hi: f64, what: &str) -> Result<f32, ApiError> {
    let v = finite(param, v)?;
    if v < lo || v > hi {
        return Err(ApiError::invalid_param(
            param,
            format!("`{param}` must be {what}, got {v}"),
        ));
    }
    Ok(v as f32)
}

/// Validates the shared fields. `default_max_tokens` is 16 for completions, `None` for chat.
pub fn generation_params(
    f: SamplingFields,
    logprobs: Option<i64>,
    default_max_tokens: Option<usize>,
    vocab_size: usize,
) -> Result<GenerationParams, ApiError> {
    let mut sampling = SamplingParams::default();
    if let Some(t) = f.temperature {
        sampling.temperature = in_range("temperature", t, 0.0, 100.0, "between 0 and 100")?;
    }
    if let Some(p) = f.top_p {
        let p = in_range("top_p", p, 0.0, 1.0, "in (0, 1]")?;
        if p <= 0.0 {
            return Err(ApiError::invalid_param(
                "top_p",
                "`top_p` must be in (0, 1], got 0",
            ));
        }
        sampling.top_p = p;
    }
    if let Some(k) = f.top_k {
        if k < -1 {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("`top_k` must be -1 (off), 0 (off) or positive, got {k}"),
            ));
        }
        sampling.top_k = k.max(0) as usize;
    }
    if let Some(p) = f.min_p {
        sampling.min_p = in_range("min_p", p, 0.0, 1.0, "in [0, 1]")?;
    }
    if let Some(p) = f.presence_penalty {
        sampling.presence_penalty = in_range("presence_penalty", p, -2.0, 2.0, "in [-2, 2]")?;
    }
    if let Some(p) = f.frequency_penalty {
        sampling.frequency_penalty = in_range("frequency_penalty", p, -2.0, 2.0, "in [-2, 2]")?;
    }
    if let Some(p) = f.repetition_penalty {
        let p = in_range("repetition_penalty", p, 0.0, 10.0, "in (0, 10]")?;
        if p <= 0.0 {
            return Err(ApiError::invalid_param(
                "repetition_penalty",
                "`repetition_penalty` must be positive",
            ));
        }
        sampling.repetition_penalty = p;
    }
    sampling.seed = f.seed.map(|s| s as u64);
    let logit_bias = f.logit_bias.unwrap_or_default();
    if logit_bias.len() > MAX_LOGIT_BIAS {
        return Err(ApiError::invalid_param(
            "logit_bias",
            format!(
                "`logit_bias` has {} entries; at most {MAX_LOGIT_BIAS} are allowed",
                logit_bias.len()
            ),
        ));
    }
    for (key, bias) in logit_bias {
        let token = key
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&t| (t as usize) < vocab_size)
            .ok_or_else(|| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("`logit_bias` key `{key}` is not a token id of this vocabulary"),
                )
            })?;
        let bias = in_range("logit_bias", bias, -100.0, 100.0, "in [-100, 100]")?;
        if sampling.logit_bias.iter().any(|&(seen, _)| seen == token) {
            return Err(ApiError::invalid_param(
                "logit_bias",
                format!("`logit_bias` names token {token} twice (as `{key}` and another spelling)"),
            ));
        }
        sampling.logit_bias.push((token, bias));
    }
    if let Some(k) = logprobs {
        if !(0..=MAX_LOGPROBS).contains(&k) {
            return Err(ApiError::invalid_param(
                "logprobs",
                format!("`logprobs` must be in [0, {MAX_LOGPROBS}], got {k}"),
            ));
        }
        sampling.logprobs = Some(k as usize);
    }
    let max_tokens = match f.max_completion_tokens.or(f.max_tokens) {
        Some(m) if m < 1 => {
            let param = if f.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid_param(
                param,
                format!("`{param}` must be at least 1, got {m}"),
            ));
        }
        Some(m) => Some(m as usize),
        None => default_max_tokens,
    };
    let min_tokens = match f.min_tokens {
        Some(m) if m < 0 => {
            return Err(ApiError::invalid_param(
                "min_tokens",
                "`min_tokens` must be non-negative",
            ));
        }
        Some(m) if max_tokens.is_some_and(|max| m as usize > max) => {
            return Err(ApiError::invalid_param(
                "min_tokens",
                "`min_tokens` must not exceed `max_tokens`",
            ));
        }
        Some(m) => m as usize,
        None => 0,
    };
    let n = match f.n {
        Some(n) if !(1..=MAX_N).contains(&n) => {
            return Err(ApiError::invalid_param(
                "n",
                format!("`n` must be in [1, {MAX_N}], got {n}"),
            ));
        }
        Some(n) => n as usize,
        None => 1,
    };
    let stop_token_ids = f.stop_token_ids.unwrap_or_default();
    if let Some(bad) = stop_token_ids.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(ApiError::invalid_param(
            "stop_token_ids",
            format!("token id {bad} is outside the vocabulary"),
        ));
    }
    let stop = f.stop.map(|s| s.into_vec()).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "stop strings must not be empty",
        ));
    }
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "{} stop strings given; at most {MAX_STOP_STRINGS} are allowed",
                stop.len()
            ),
        ));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "a stop string of {} bytes; at most {MAX_STOP_BYTES} are allowed",
                long.len()
            ),
        ));
    }
    Ok(GenerationParams {
        sampling,
        max_tokens,
        min_tokens,
        stop,
        stop_token_ids,
        ignore_eos: f.ignore_eos,
        n,
        stream: f.stream,
        include_usage: f.stream_options.is_some_and(|o| o.include_usage),
        skip_special_tokens: f.skip_special_tokens.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<GenerationParams, ApiError> {
        let f: SamplingFields = serde_json::from_str(json).unwrap();
        generation_params(f, None, Some(16), 1000)
    }

    #[test]
    fn each_bad_value_names_its_param() {
        for (json, param) in [
            (r#"{"temperature": -1}"#, "temperature"),
            (r#"{"max_tokens": 0}"#, "max_tokens"),
            (r#"{"max_completion_tokens": -3}"#, "max_completion_tokens"),
            (r#"{"top_p": 2}"#, "top_p"),
            (r#"{"top_p": 0}"#, "top_p"),
            (r#"{"n": 0}"#, "n"),
            (r#"{"top_k": -5}"#, "top_k"),
            (r#"{"min_p": 1.5}"#, "min_p"),
            (r#"{"presence_penalty": 3}"#, "presence_penalty"),
            (r#"{"repetition_penalty": 0}"#, "repetition_penalty"),
            (r#"{"stop_token_ids": [5000]}"#, "stop_token_ids"),
            (r#"{"max_tokens": 4, "min_tokens": 5}"#, "min_tokens"),
            (r#"{"stop": [""]}"#, "stop"),
            (r#"{"logit_bias": {"12": 101}}"#, "logit_bias"),
            (r#"{"logit_bias": {"1000": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"dog": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"-3": 1}}"#, "logit_bias"),
            (r#"{"logit_bias": {"7": 1, "07": 2}}"#, "logit_bias"),
        ] {
            let err = check(json).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}: {err:?}");
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn oversized_stop_and_logit_bias_lists_are_refused() {
        let many_stops = serde_json::json!({"stop": vec!["x"; MAX_STOP_STRINGS + 1]});
        let long_stop = serde_json::json!({"stop": "y".repeat(MAX_STOP_BYTES + 1)});
        let bias: serde_json::Map<String, serde_json::Value> = (0..=MAX_LOGIT_BIAS)
            .map(|id| (id.to_string(), serde_json::json!(1)))
            .collect();
        let many_biases = serde_json::json!({ "logit_bias": bias });
        for (json, param) in [
            (many_stops, "stop"),
            (long_stop, "stop"),
            (many_biases, "logit_bias"),
        ] {
            let f: SamplingFields = serde_json::from_value(json).unwrap();
            let err = generation_params(f, None, Some(16), 100_000).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{err:?}");
        }
        let ok = serde_json::json!({"stop": vec!["x"; MAX_STOP_STRINGS]});
        let f: SamplingFields = serde_json::from_value(ok).unwrap();
        assert!(generation_params(f, None, Some(16), 100_000).is_ok());
    }

    #[test]
    fn defaults_follow_vllm() {
        let p = check("{}").unwrap();
        assert_eq!(
            (p.max_tokens, p.n, p.sampling.temperature, p.sampling.top_k),
            (Some(16), 1, 1.0, 0)
        );
        assert!(p.skip_special_tokens && !p.stream);
    }

    #[test]
    fn logit_bias_becomes_token_biases() {
        let p = check(r#"{"logit_bias": {"7": -100, " 42": 2.5}}"#).unwrap();
        assert_eq!(p.sampling.logit_bias, vec![(42, 2.5), (7, -100.0)]);
    }
}
