//! A streamed response: the engine's events of one request turned into OpenAI chunks as the
//! socket takes them (an echoed prompt first; tool calls as `tool_calls` deltas). The SSE body
//! reads the request's stream directly (no task in between), so a client that goes away drops
//! the stream and cancels the request in the engine; every stream ends with `data: [DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use super::logprobs::{chat_logprobs, completion_logprobs};
use super::protocol::{
    ChatChunk, ChatChunkChoice, ChatDelta, ChatLogprobs, CompletionChoice, CompletionLogprobs,
    CompletionResponse, StopReasonOut, Usage,
};
use super::tools::{Piece, ToolPlan, ToolStream};
use super::validate::GenerationParams;
use crate::engine::{Event, RequestStream};

/// Which endpoint a response is shaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Completion,
    Chat,
}

/// How a response is shaped beyond the engine's text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub shape: Shape,
    /// Text the reply starts with (`echo`).
    pub echo: Option<String>,
    /// Tools the output may call (chat).
    pub tools: Option<ToolPlan>,
}

/// The fields every chunk of one response repeats.
#[derive(Debug, Clone)]
pub struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// The SSE response of `stream` (every choice of one request).
pub fn response(
    state: Arc<AppState>,
    head: Head,
    reply: Reply,
    params: GenerationParams,
    prompt_tokens: usize,
    stream: RequestStream,
) -> Response {
    let shape = reply.shape;
    let echo = reply.echo.unwrap_or_default();
    let mut writer = ChunkWriter {
        offsets: vec![echo.len(); params.n],
        tool_streams: (0..params.n)
            .map(|_| reply.tools.clone().map(ToolStream::new))
            .collect(),
        state,
        head,
        shape,
        params,
        prompt_tokens,
        completion_tokens: 0,
        cached_tokens: 0,
        stream,
        queued: VecDeque::new(),
        ended: false,
    };
    for index in 0..writer.params.n {
        match shape {
            Shape::Chat => {
                writer.chat_chunk(
                    index,
                    content_delta(Some("assistant"), String::new()),
                    None,
                    None,
                    None,
                );
                if !echo.is_empty() {
                    writer.chat_chunk(index, content_delta(None, echo.clone()), None, None, None);
                }
            }
            Shape::Completion if !echo.is_empty() => {
                writer.completion_chunk(index, echo.clone(), None, None, None);
            }
            Shape::Completion => {}
        }
    }
    let frames = futures::stream::unfold(writer, |mut writer| async move {
        let frame = writer.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), writer))
    });
    Sse::new(frames).into_response()
}

fn content_delta(role: Option<&'static str>, text: String) -> ChatDelta {
    ChatDelta {
        role,
        content: Some(text),
        tool_calls: None,
    }
}

fn piece_delta(piece: Piece) -> ChatDelta {
    match piece {
        Piece::Content(text) => content_delta(None, text),
        Piece::Calls(calls) => ChatDelta {
            role: None,
            content: None,
            tool_calls: Some(calls),
        },
    }
}

struct ChunkWriter {
    state: Arc<AppState>,
    head: Head,
    shape: Shape,
    params: GenerationParams,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Prompt tokens found in the prefix cache (the most of any choice).
    cached_tokens: usize,
    /// Bytes of text sent so far per choice (completions' `text_offset`).
    offsets: Vec<usize>,
    /// Per choice, its output under a tool plan (chat with tools).
    tool_streams: Vec<Option<ToolStream>>,
    stream: RequestStream,
    /// Frames ready to be written.
    queued: VecDeque<SseEvent>,
    /// `[DONE]` is queued; nothing follows.
    ended: bool,
}

impl ChunkWriter {
    async fn next_frame(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(frame) = self.queued.pop_front() {
                return Some(frame);
            }
            if self.ended {
                return None;
            }
            match self.stream.next().await {
                Some(event) => self.on_event(event),
                None => self.end(),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Output {
                index,
                text,
                tokens,
            } => {
                if text.is_empty() && self.params.sampling.logprobs.is_none() {
                    return;
                }
                let offset = self.offsets.get(index).copied().unwrap_or(0);
                if let Some(o) = self.offsets.get_mut(index) {
                    *o += text.len();
                }
                match self.shape {
                    Shape::Completion => {
                        let logprobs = self
                            .params
                            .sampling
                            .logprobs
                            .map(|_| completion_logprobs(&self.state, &tokens, offset));
                        self.completion_chunk(index, text, logprobs, None, None);
                    }
                    Shape::Chat => {
                        let mut logprobs = self
                            .params
                            .sampling
                            .logprobs
                            .map(|_| chat_logprobs(&self.state, &tokens));
                        let pieces = match self.tool_streams.get_mut(index) {
                            Some(Some(tools)) => tools.push(&text),
                            _ => vec![Piece::Content(text)],
                        };
                        if pieces.is_empty() && logprobs.is_some() {
                            self.chat_chunk(
                                index,
                                content_delta(None, String::new()),
                                logprobs.take(),
                                None,
                                None,
                            );
                        }
                        for piece in pieces {
                            self.chat_chunk(index, piece_delta(piece), logprobs.take(), None, None);
                        }
                    }
                }
            }
            Event::Finished {
                index,
                reason,
                stop_reason,
                completion_tokens,
                cached_tokens,
            } => {
                self.completion_tokens += completion_tokens;
                self.cached_tokens = self.cached_tokens.max(cached_tokens);
                let stop_reason = stop_reason.map(Into::into);
                match self.shape {
                    Shape::Completion => self.completion_chunk(
                        index,
                        String::new(),
                        None,
                        Some(reason.as_str()),
                        stop_reason,
                    ),
                    Shape::Chat => {
                        let (pieces, called) = match self.tool_streams.get_mut(index) {
                            Some(Some(tools)) => tools.finish(),
                            _ => (Vec::new(), false),
                        };
                        for piece in pieces {
                            self.chat_chunk(index, piece_delta(piece), None, None, None);
                        }
                        let reason = if called {
                            "tool_calls"
                        } else {
                            reason.as_str()
                        };
                        let delta = ChatDelta {
                            role: None,
                            content: None,
                            tool_calls: None,
                        };
                        self.chat_chunk(index, delta, None, Some(reason), stop_reason);
                    }
                }
            }
            Event::Failed { error, .. } => {
                let error = ApiError::from(error);
                self.queued
                    .push_back(SseEvent::default().data(error.body().to_string()));
                self.queued.push_back(SseEvent::default().data("[DONE]"));
                self.ended = true;
            }
        }
    }

    /// Every choice ended (or the engine went away): usage if asked for, then `[DONE]`.
    fn end(&mut self) {
        if !self.stream.is_complete() {
            let error = ApiError::internal("the engine stopped before the output was complete");
            self.queued
                .push_back(SseEvent::default().data(error.body().to_string()));
        } else if self.params.include_usage {
            let usage = Usage::new(self.prompt_tokens, self.completion_tokens)
                .with_cached(self.cached_tokens);
            match self.shape {
                Shape::Completion => self.push(&CompletionResponse {
                    id: self.head.id.clone(),
                    object: "text_completion",
                    created: self.head.created,
                    model: self.head.model.clone(),
                    choices: Vec::new(),
                    usage: Some(usage),
                }),
                Shape::Chat => self.push(&ChatChunk {
                    id: self.head.id.clone(),
                    object: "chat.completion.chunk",
                    created: self.head.created,
                    model: self.head.model.clone(),
                    choices: Vec::new(),
                    usage: Some(usage),
                }),
            }
        }
        self.queued.push_back(SseEvent::default().data("[DONE]"));
        self.ended = true;
    }

    fn completion_chunk(
        &mut self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<&'static str>,
        stop_reason: Option<StopReasonOut>,
    ) {
        let chunk = CompletionResponse {
            id: self.head.id.clone(),
            object: "text_completion",
            created: self.head.created,
            model: self.head.model.clone(),
            choices: vec![CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason,
                stop_reason,
            }],
            usage: None,
        };
        self.push(&chunk);
    }

    fn chat_chunk(
        &mut self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<&'static str>,
        stop_reason: Option<StopReasonOut>,
    ) {
        let chunk = ChatChunk {
            id: self.head.id.clone(),
            object: "chat.completion.chunk",
            created: self.head.created,
            model: self.head.model.clone(),
            choices: vec![ChatChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason,
                stop_reason,
            }],
            usage: None,
        };
        self.push(&chunk);
    }

    fn push(&mut self, chunk: &impl Serialize) {
        let frame = match serde_json::to_string(chunk) {
            Ok(json) => SseEvent::default().data(json),
            Err(e) => SseEvent::default().data(
                ApiError::internal(format!("serializing a chunk: {e}"))
                    .body()
                    .to_string(),
            ),
        };
        self.queued.push_back(frame);
    }
}
