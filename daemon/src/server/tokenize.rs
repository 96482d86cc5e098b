//! Tokenizer work off the async runtime: encoding a large prompt or rendering a chat template
//! takes milliseconds of CPU per megabyte, which on the runtime's few worker threads would stall
//! every other request and the probes. Each job runs on the blocking pool, at most one per core
//! at a time (more would only queue inside the pool).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::tokenizer::{ChatMessage, Codec};

/// The codec and the slots its blocking jobs take.
pub struct TokenizerPool {
    codec: Arc<Codec>,
    slots: Arc<Semaphore>,
}

/// A prompt's ids, and how many base ids it was before the vocabulary patch.
#[derive(Debug)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub base_len: usize,
}

impl TokenizerPool {
    pub fn new(codec: Arc<Codec>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            codec,
            slots: Arc::new(Semaphore::new(cores)),
        }
    }

    pub fn codec(&self) -> &Arc<Codec> {
        &self.codec
    }

    /// Runs `job` with the codec on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Codec) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ApiError::unavailable("the tokenizer pool is closed"))?;
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || job(&codec))
            .await
            .map_err(|e| ApiError::internal(format!("tokenizer job failed: {e}")))?
    }

    /// Text → ids (`param` names the field a tokenizer error is reported for).
    pub async fn encode(
        &self,
        text: String,
        add_special: bool,
        param: &'static str,
    ) -> Result<Encoded, ApiError> {
        self.run(move |codec| {
            let (ids, base_len) = codec
                .encode_counting_base(&text, add_special)
                .map_err(|e| ApiError::invalid_param(param, e.to_string()))?;
            Ok(Encoded { ids, base_len })
        })
        .await
    }

    /// Chat messages → the model's prompt text, through its chat template.
    pub async fn render_chat(
        &self,
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
    ) -> Result<String, ApiError> {
        self.run(move |codec| render_chat(codec, &messages, add_generation_prompt))
            .await
    }

    /// Chat messages → prompt ids (rendered and encoded in one job).
    pub async fn encode_chat(
        &self,
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
    ) -> Result<Encoded, ApiError> {
        self.run(move |codec| {
            let text = render_chat(codec, &messages, add_generation_prompt)?;
            let (ids, base_len) = codec
                .encode_counting_base(&text, false)
                .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
            Ok(Encoded { ids, base_len })
        })
        .await
    }
}

fn render_chat(
    codec: &Codec,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    if !codec.has_chat_template() {
        return Err(ApiError::bad_request(
            "this model has no chat template; use /v1/completions",
        ));
    }
    codec
        .apply_chat_template(messages, add_generation_prompt)
        .map_err(|e| ApiError::invalid_param("messages", e.to_string()))
}
