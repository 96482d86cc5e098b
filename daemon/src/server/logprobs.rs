//! Logprobs objects of both endpoints, built from the engine's sampled tokens.

use super::AppState;
use super::protocol::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob};
use crate::model::sampling::Sampled;

fn token_text(state: &AppState, id: u32) -> String {
    state.codec.decode(&[id], false).unwrap_or_default()
}

pub fn completion_logprobs(
    state: &AppState,
    tokens: &[Sampled],
    start_offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = start_offset;
    for t in tokens {
        let text = token_text(state, t.token);
        out.text_offset.push(offset);
        offset += text.len();
        out.tokens.push(text);
        out.token_logprobs.push(t.logprob.unwrap_or(0.0));
        out.top_logprobs.push(
            t.top
                .iter()
                .map(|&(id, lp)| (token_text(state, id), lp))
                .collect(),
        );
    }
    out
}

pub fn chat_logprobs(state: &AppState, tokens: &[Sampled]) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|t| {
            let token = token_text(state, t.token);
            ChatTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: t.logprob.unwrap_or(0.0),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = token_text(state, id);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}
