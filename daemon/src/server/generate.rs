//! Between a validated request and the engine: the engine's [`GenerateRequest`], and the
//! engine's events of every choice gathered into whole outputs (non-streaming responses).

use super::error::ApiError;
use super::validate::GenerationParams;
use crate::engine::{Event, GenerateRequest, RequestStream, StopReason};
use crate::guide::Guide;
use crate::model::sampling::Sampled;

/// What the engine runs for `params.n` choices of `prompt`.
pub fn engine_request(
    request_id: &str,
    prompt: Vec<u32>,
    params: &GenerationParams,
    max_new_tokens: usize,
    guide: Option<Guide>,
) -> GenerateRequest {
    GenerateRequest {
        request_id: request_id.to_owned(),
        span: tracing::Span::current(),
        prompt,
        sampling: params.sampling.clone(),
        n: params.n,
        max_new_tokens,
        min_tokens: params.min_tokens,
        stop_token_ids: params.stop_token_ids.clone(),
        stop: params.stop.clone(),
        ignore_eos: params.ignore_eos,
        skip_special_tokens: params.skip_special_tokens,
        guide,
        arrival: std::time::Instant::now(),
    }
}

/// A whole choice, for non-streaming responses.
#[derive(Debug, Clone, Default)]
pub struct ChoiceOutput {
    pub text: String,
    pub tokens: Vec<Sampled>,
    pub finish_reason: Option<&'static str>,
    pub stop_reason: Option<StopReason>,
    pub completion_tokens: usize,
    /// Prompt tokens this choice found in the prefix cache.
    pub cached_tokens: usize,
}

/// Runs every choice to the end and gathers them, in choice order.
pub async fn collect(mut stream: RequestStream, n: usize) -> Result<Vec<ChoiceOutput>, ApiError> {
    let mut outputs = vec![ChoiceOutput::default(); n];
    while let Some(event) = stream.next().await {
        match event {
            Event::Output {
                index,
                text,
                tokens,
            } => {
                let output = choice(&mut outputs, index)?;
                output.text.push_str(&text);
                output.tokens.extend(tokens);
            }
            Event::Finished {
                index,
                reason,
                stop_reason,
                completion_tokens,
                cached_tokens,
            } => {
                let output = choice(&mut outputs, index)?;
                output.finish_reason = Some(reason.as_str());
                output.stop_reason = stop_reason;
                output.completion_tokens = completion_tokens;
                output.cached_tokens = cached_tokens;
            }
            Event::Failed { error, .. } => return Err(error.into()),
        }
    }
    if !stream.is_complete() {
        return Err(ApiError::internal(
            "the engine stopped before the output was complete",
        ));
    }
    Ok(outputs)
}

fn choice(outputs: &mut [ChoiceOutput], index: usize) -> Result<&mut ChoiceOutput, ApiError> {
    let count = outputs.len();
    outputs
        .get_mut(index)
        .ok_or_else(|| ApiError::internal(format!("the engine sent choice {index} of {count}")))
}
