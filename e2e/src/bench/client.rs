//! One streaming request to an OpenAI-compatible server, timed at the client the way
//! `vllm bench serve` times it: TTFT from sending to the first chunk that carries text, one
//! inter-token latency per later text chunk, latency to the end of the stream. Token counts come
//! from the stream's `usage` (asked for with `stream_options.include_usage`) when the server
//! sends it.
//!
//! Unlike vLLM's chat client, a chat chunk that carries only the role (no text) does not stop
//! the TTFT clock: only generated text does.

use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::bench::BenchError;
use crate::bench::dataset::BenchPrompt;
use crate::bench::sse::SseLines;

/// The API flavour (`--backend`, vLLM's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Backend {
    /// `POST /v1/completions` with `prompt`
    #[serde(rename = "openai")]
    #[value(name = "openai")]
    Completions,
    /// `POST /v1/chat/completions` with one user message
    #[serde(rename = "openai-chat")]
    #[value(name = "openai-chat")]
    Chat,
}

impl Backend {
    /// The default `--endpoint` of this flavour.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Self::Completions => "/v1/completions",
            Self::Chat => "/v1/chat/completions",
        }
    }
}

/// Where and how to send requests.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub http: reqwest::Client,
    /// Full URL of the API route.
    pub url: String,
    pub backend: Backend,
    pub model: String,
    pub api_key: Option<String>,
    pub ignore_eos: bool,
    pub temperature: f64,
    /// Extra fields merged into every request body (`--extra-body`), winning over ours.
    pub extra_body: Map<String, Value>,
}

/// What happened to one request, times in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Sent at, since the start of the run.
    pub start_s: f64,
    pub success: bool,
    pub error: Option<String>,
    pub ttft_s: f64,
    /// Gaps between consecutive text chunks after the first.
    pub itl_s: Vec<f64>,
    /// Sending to the end of the stream.
    pub latency_s: f64,
    pub generated_text: String,
    /// `usage.prompt_tokens` / `usage.completion_tokens`, when the server reported them.
    pub usage_prompt_tokens: Option<usize>,
    pub usage_completion_tokens: Option<usize>,
    /// The prompt's length by the client's reference tokenizer.
    pub ref_prompt_len: usize,
}

impl Endpoint {
    /// The JSON body of a request for `prompt`.
    pub fn body(&self, prompt: &BenchPrompt) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": prompt.output_len,
            "temperature": self.temperature,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let fields = body
            .as_object_mut()
            .expect("a json! object literal is an object");
        match self.backend {
            Backend::Completions => fields.insert("prompt".into(), json!(prompt.text)),
            Backend::Chat => fields.insert(
                "messages".into(),
                json!([{"role": "user", "content": prompt.text}]),
            ),
        };
        if self.ignore_eos {
            fields.insert("ignore_eos".into(), json!(true));
        }
        for (key, value) in &self.extra_body {
            fields.insert(key.clone(), value.clone());
        }
        body
    }

    /// Sends `prompt` and times it; `run_start` is the start of the run. Never fails: errors are
    /// recorded in the result.
    pub async fn send(&self, prompt: &BenchPrompt, run_start: Instant) -> RequestRecord {
        let sent = Instant::now();
        let mut record = RequestRecord {
            start_s: sent.duration_since(run_start).as_secs_f64(),
            ref_prompt_len: prompt.prompt_len,
            ..RequestRecord::default()
        };
        if let Err(reason) = self.stream_into(prompt, sent, &mut record).await {
            record.success = false;
            record.error = Some(reason);
        }
        record.latency_s = sent.elapsed().as_secs_f64();
        record
    }

    async fn stream_into(
        &self,
        prompt: &BenchPrompt,
        sent: Instant,
        record: &mut RequestRecord,
    ) -> Result<(), String> {
        let mut request = self.http.post(&self.url).json(&self.body(prompt));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            // With its causes (connection reset, closed before the response): Display hides them.
            let chain: Vec<String> =
                std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                    .map(ToString::to_string)
                    .collect();
            format!("send: {}", chain.join(": "))
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!("HTTP {status}: {}", body.trim()));
        }
        let mut body = response.bytes_stream();
        let mut sse = SseLines::default();
        let mut last_text_at: Option<Instant> = None;
        let mut done = false;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| format!("reading the stream: {e}"))?;
            let now = Instant::now();
            for payload in sse.push(&piece) {
                done |= self.on_event(&payload, now, sent, &mut last_text_at, record)?;
            }
        }
        if let Some(payload) = sse.finish() {
            done |= self.on_event(&payload, Instant::now(), sent, &mut last_text_at, record)?;
        }
        if !done {
            return Err("the stream ended without `data: [DONE]`".into());
        }
        if last_text_at.is_none() && record.usage_completion_tokens.unwrap_or(0) > 0 {
            return Err("the server reported completion tokens but streamed no text".into());
        }
        record.success = true;
        Ok(())
    }

    /// Handles one SSE payload; true at `[DONE]`.
    fn on_event(
        &self,
        payload: &str,
        now: Instant,
        sent: Instant,
        last_text_at: &mut Option<Instant>,
        record: &mut RequestRecord,
    ) -> Result<bool, String> {
        if payload.trim() == "[DONE]" {
            return Ok(true);
        }
        let event: Value =
            serde_json::from_str(payload).map_err(|e| format!("bad chunk {payload:?}: {e}"))?;
        if let Some(error) = event.get("error") {
            return Err(format!("error event: {error}"));
        }
        if let Some(usage) = event.get("usage").filter(|u| !u.is_null()) {
            let count = |key: &str| usage.get(key).and_then(Value::as_u64).map(|n| n as usize);
            record.usage_prompt_tokens = count("prompt_tokens").or(record.usage_prompt_tokens);
            record.usage_completion_tokens =
                count("completion_tokens").or(record.usage_completion_tokens);
        }
        let text = event
            .get("choices")
            .and_then(|c| c.get(0))
            .and_then(|choice| match self.backend {
                Backend::Completions => choice.get("text"),
                Backend::Chat => choice.get("delta").and_then(|d| d.get("content")),
            })
            .and_then(Value::as_str)
            .unwrap_or("");
        if !text.is_empty() {
            match last_text_at {
                None => record.ttft_s = now.duration_since(sent).as_secs_f64(),
                Some(prev) => record.itl_s.push(now.duration_since(*prev).as_secs_f64()),
            }
            *last_text_at = Some(now);
            record.generated_text.push_str(text);
        }
        Ok(false)
    }
}

/// The model id a server serves first (`GET /v1/models`), for when `--model` is not given.
pub async fn first_model(
    http: &reqwest::Client,
    base_url: &str,
    api_key: Option<&str>,
) -> Result<String, BenchError> {
    let url = format!("{base_url}/v1/models");
    let server_err = |reason: String| BenchError::Server {
        url: url.clone(),
        reason,
    };
    let mut request = http.get(&url);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .map_err(|e| server_err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(server_err(format!("HTTP {}", response.status())));
    }
    let models: Value = response
        .json()
        .await
        .map_err(|e| server_err(format!("not JSON: {e}")))?;
    models
        .get("data")
        .and_then(|d| d.get(0))
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| server_err("lists no model; pass --model".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(backend: Backend, extra: Value) -> Endpoint {
        Endpoint {
            http: reqwest::Client::new(),
            url: "http://127.0.0.1:9/v1/completions".into(),
            backend,
            model: "m".into(),
            api_key: None,
            ignore_eos: true,
            temperature: 0.0,
            extra_body: extra.as_object().cloned().unwrap_or_default(),
        }
    }

    fn prompt() -> BenchPrompt {
        BenchPrompt {
            text: "hi".into(),
            prompt_len: 1,
            output_len: 5,
        }
    }

    #[test]
    fn bodies_follow_the_backend_and_extra_fields_win() {
        let body = endpoint(
            Backend::Completions,
            json!({"min_tokens": 5, "temperature": 0.5}),
        )
        .body(&prompt());
        assert_eq!(body["prompt"], "hi");
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["min_tokens"], 5);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["stream_options"]["include_usage"], true);
        let chat = endpoint(Backend::Chat, json!({})).body(&prompt());
        assert_eq!(chat["messages"][0]["content"], "hi");
        assert!(chat.get("prompt").is_none());
    }

    #[test]
    fn events_time_text_chunks_and_read_usage() {
        let ep = endpoint(Backend::Chat, json!({}));
        let sent = Instant::now();
        let mut last = None;
        let mut rec = RequestRecord::default();
        let role_only = r#"{"choices":[{"delta":{"role":"assistant"}}]}"#;
        assert!(
            !ep.on_event(role_only, sent, sent, &mut last, &mut rec)
                .expect("valid")
        );
        assert!(last.is_none(), "a role-only chunk is not a token");
        let t1 = sent + std::time::Duration::from_millis(30);
        let t2 = t1 + std::time::Duration::from_millis(10);
        let text = |s: &str| format!(r#"{{"choices":[{{"delta":{{"content":"{s}"}}}}]}}"#);
        ep.on_event(&text("a"), t1, sent, &mut last, &mut rec)
            .expect("valid");
        ep.on_event(&text("b"), t2, sent, &mut last, &mut rec)
            .expect("valid");
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        ep.on_event(usage, t2, sent, &mut last, &mut rec)
            .expect("valid");
        assert!(
            ep.on_event("[DONE]", t2, sent, &mut last, &mut rec)
                .expect("valid")
        );
        assert!((rec.ttft_s - 0.030).abs() < 1e-9);
        assert_eq!(rec.itl_s.len(), 1);
        assert!((rec.itl_s[0] - 0.010).abs() < 1e-9);
        assert_eq!(rec.generated_text, "ab");
        assert_eq!(
            (rec.usage_prompt_tokens, rec.usage_completion_tokens),
            (Some(3), Some(2))
        );
        let err = ep.on_event(
            r#"{"error":{"message":"boom"}}"#,
            t2,
            sent,
            &mut last,
            &mut rec,
        );
        assert!(err.is_err_and(|e| e.contains("boom")));
        assert!(
            ep.on_event("not json", t2, sent, &mut last, &mut rec)
                .is_err()
        );
    }
}
