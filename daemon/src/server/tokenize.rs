//! Tokenizer work off the async runtime: encoding a large prompt, rendering a chat template or
//! compiling an output constraint takes milliseconds of CPU or more, which on the runtime's few
//! worker threads would stall every other request and the probes. Each job runs on the blocking
//! pool, at most one per core at a time (more would only queue inside the pool). The grammar
//! compiler for structured outputs is built once in the background at start-up.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::guide::{Guide, GuideError, GuideSpec, Guides};
use crate::tokenizer::{ChatMessage, Codec};

/// The codec and the slots its blocking jobs take.
pub struct TokenizerPool {
    codec: Arc<Codec>,
    slots: Arc<Semaphore>,
    /// Structured outputs' compiler, or why this tokenizer cannot have one.
    guides: Arc<OnceLock<Result<Guides, String>>>,
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
        let guides = Arc::new(OnceLock::new());
        let (cell, for_guides) = (guides.clone(), codec.clone());
        let built = std::thread::Builder::new()
            .name("fused-guides".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let build = std::panic::AssertUnwindSafe(|| Guides::new(for_guides));
                let result = std::panic::catch_unwind(build)
                    .unwrap_or_else(|_| {
                        Err(GuideError::Vocabulary(
                            "building the token trie panicked".into(),
                        ))
                    })
                    .map_err(|e| e.to_string());
                match &result {
                    Ok(_) => tracing::info!(
                        seconds = started.elapsed().as_secs_f64(),
                        "structured outputs ready"
                    ),
                    Err(e) => tracing::warn!(error = %e, "structured outputs are unavailable"),
                }
                let _ = cell.set(result);
            });
        if let Err(e) = built {
            let _ = guides.set(Err(format!("starting the grammar compiler: {e}")));
        }
        Self {
            codec,
            slots: Arc::new(Semaphore::new(cores)),
            guides,
        }
    }

    /// Compiles an output constraint into the guide of one choice; a constraint that does not
    /// compile is a 400 naming `param`.
    pub async fn compile_guide(&self, spec: GuideSpec, param: String) -> Result<Guide, ApiError> {
        let guides = self.guides.clone();
        self.run(move |_| match guides.wait() {
            Err(why) => Err(ApiError::invalid_param(&param, why.clone())),
            Ok(guides) => guides.compile(&spec).map_err(|e| {
                ApiError::invalid_param(&param, format!("`{param}` cannot be enforced: {e}"))
            }),
        })
        .await
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
        self.run(move |codec| render_chat(codec, &messages, add_generation_prompt, None))
            .await
    }

    /// Chat messages (and the template's `tools`) → prompt ids, rendered and encoded in one job.
    pub async fn encode_chat(
        &self,
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
        tools: Option<Vec<serde_json::Value>>,
    ) -> Result<Encoded, ApiError> {
        self.run(move |codec| {
            let text = render_chat(codec, &messages, add_generation_prompt, tools.as_deref())?;
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
    tools: Option<&[serde_json::Value]>,
) -> Result<String, ApiError> {
    if !codec.has_chat_template() {
        return Err(ApiError::bad_request(
            "this model has no chat template; use /v1/completions",
        ));
    }
    codec
        .apply_chat_template_with_tools(messages, add_generation_prompt, tools)
        .map_err(|e| ApiError::invalid_param("messages", e.to_string()))
}
