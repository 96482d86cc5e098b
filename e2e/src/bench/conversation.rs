//! Multi-turn chat traces (`--multi-turn N`): the dataset's prompts taken N at a time as the user
//! messages of one conversation; each turn is sent once the last one has finished, with the whole
//! conversation so far (earlier messages and the answers the server gave) before its own
//! message, so each turn's prompt extends the last: what a prefix cache serves.
//!
//! The history travels as the prompt text (one growing user message on the chat API), so the
//! same trace runs on both APIs.
//!
//! Must not: send anything (the runner does) or wait.

use crate::bench::client::RequestRecord;
use crate::bench::dataset::BenchPrompt;

/// Between one turn's answer and the next user message.
const TURN_SEPARATOR: &str = "\n\n";

/// The prompt of the turn after `previous`, which the server answered as `answered`: the previous
/// prompt, its answer and `next`'s message; `next`'s output length. Its reference length adds
/// the answer's tokens as the server counted them (`usage`, which every request asks for; a
/// server that sends none has its reported prompt lengths used instead, as in any run).
pub fn next_turn(
    previous: &BenchPrompt,
    answered: &RequestRecord,
    next: &BenchPrompt,
) -> BenchPrompt {
    let answer_tokens = answered.usage_completion_tokens.unwrap_or(0);
    BenchPrompt {
        text: format!(
            "{}{}{TURN_SEPARATOR}{}",
            previous.text, answered.generated_text, next.text
        ),
        prompt_len: previous.prompt_len + answer_tokens + next.prompt_len,
        output_len: next.output_len,
    }
}

/// The dataset prompt that opens turn `turn` of conversation `conversation` (prompts are reused
/// in order when the run needs more than the dataset has).
pub fn turn_prompt(
    prompts: &[BenchPrompt],
    conversation: usize,
    turns: usize,
    turn: usize,
) -> &BenchPrompt {
    &prompts[(conversation * turns + turn) % prompts.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str, len: usize, out: usize) -> BenchPrompt {
        BenchPrompt {
            text: text.into(),
            prompt_len: len,
            output_len: out,
        }
    }

    #[test]
    fn each_turn_extends_the_last_with_its_answer() {
        let first = prompt("Hello.", 2, 8);
        let answered = RequestRecord {
            generated_text: " Hi there!".into(),
            usage_completion_tokens: Some(3),
            ..RequestRecord::default()
        };
        let second = next_turn(&first, &answered, &prompt("And then?", 3, 16));
        assert_eq!(second.text, "Hello. Hi there!\n\nAnd then?");
        assert!(second.text.starts_with(&first.text));
        assert_eq!((second.prompt_len, second.output_len), (2 + 3 + 3, 16));
    }

    #[test]
    fn conversations_take_consecutive_prompts_and_wrap() {
        let prompts: Vec<BenchPrompt> = (0..5).map(|i| prompt(&i.to_string(), 1, 1)).collect();
        let texts: Vec<&str> = (0..3)
            .map(|turn| turn_prompt(&prompts, 1, 3, turn).text.as_str())
            .collect();
        assert_eq!(texts, ["3", "4", "0"]);
    }
}
