//! Chat templates: the model's Jinja template rendered with minijinja, configured like
//! `transformers` (`trim_blocks`, `lstrip_blocks`, Python string/dict methods via pycompat,
//! `raise_exception`, `tojson`), with the `tools` variable and messages carrying `tool_calls`,
//! `tool_call_id` and `name` as `transformers` passes them. Renders text only; tokenizing the
//! result is the caller's job.

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use super::error::{Result, TokenizerError};

const TEMPLATE_NAME: &str = "chat";

/// One message of a conversation, as the OpenAI API and chat templates name its fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant turn's calls: `{"id", "type": "function", "function": {"name", "arguments"}}`
    /// with `arguments` an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` turn answers this call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

/// A compiled chat template with the special-token names it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether the template reads the `tools` variable (else it cannot show tools to the model).
    reads_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a template that does not parse is an error here, not at first use.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| TokenizerError::ChatTemplate(format!("does not compile: {e:#}")))?;
        let reads_tools = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::ChatTemplate(e.to_string()))?
            .undeclared_variables(false)
            .contains("tools");
        Ok(Self {
            env,
            bos_token,
            eos_token,
            reads_tools,
        })
    }

    /// Whether the template reads the `tools` variable.
    pub fn reads_tools(&self) -> bool {
        self.reads_tools
    }

    /// Renders a conversation; `add_generation_prompt` appends the assistant turn's opening;
    /// `tools` (function definitions) is the template's `tools` variable (`none` without).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TokenizerError::ChatTemplate(e.to_string()))?;
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| TokenizerError::ChatTemplate(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::fixtures;

    #[test]
    fn smollm2_renders_chatml() {
        let Some(codec) = fixtures::smollm2() else {
            return;
        };
        let prompt = codec
            .apply_chat_template(&[ChatMessage::new("user", "What is ICD-10?")], true)
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is ICD-10?<|im_end|>\n<|im_start|>assistant\n"
        );
        let conversation = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello!"),
        ];
        assert_eq!(
            codec.apply_chat_template(&conversation, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello!<|im_end|>\n"
        );
        // The rendered prompt's markers are single special tokens.
        let ids = codec.encode(&prompt, false).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(ids.iter().filter(|id| **id == 2).count(), 2);
    }

    #[test]
    fn tools_and_tool_turns_reach_a_template_that_reads_them() {
        // The shape of Hermes/Qwen templates: tools listed in the system turn, calls as
        // `<tool_call>` blocks with `tojson` arguments, tool results as user turns.
        let source = "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t.function | tojson }}{% endfor %}</tools><|im_end|>\n{% endif %}\
            {% for m in messages %}{% if m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant\n\
            {% for c in m.tool_calls %}<tool_call>{\"name\": \"{{ c.function.name }}\", \"arguments\": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}<|im_end|>\n\
            {% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n\
            {% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}";
        let template = ChatTemplate::new(source.into(), String::new(), String::new()).unwrap();
        assert!(template.reads_tools());
        let tools =
            [serde_json::json!({"type": "function", "function": {"name": "f", "parameters": {}}})];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![serde_json::json!({"id": "1", "type": "function",
            "function": {"name": "f", "arguments": {"x": 1}}})]);
        let mut result = ChatMessage::new("tool", "42");
        result.tool_call_id = Some("1".into());
        let text = template
            .render(
                &[ChatMessage::new("user", "hi"), call, result],
                false,
                Some(&tools),
            )
            .unwrap();
        assert!(text.contains("<tools>{\"name\":\"f\""), "{text}");
        assert!(
            text.contains("<tool_call>{\"name\": \"f\", \"arguments\": {\"x\":1}}</tool_call>"),
            "{text}"
        );
        assert!(text.contains("<tool_response>42</tool_response>"), "{text}");
        let without = template
            .render(&[ChatMessage::new("user", "hi")], false, None)
            .unwrap();
        assert!(!without.contains("<tools>"), "{without}");
        if let Some(codec) = fixtures::smollm2() {
            assert!(
                !codec.chat_template_reads_tools(),
                "SmolLM2's template has no tools"
            );
        }
    }

    #[test]
    fn a_model_without_template_says_so() {
        let Some(codec) = fixtures::mistral() else {
            return;
        };
        let err = codec
            .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
            .unwrap_err();
        assert!(matches!(err, TokenizerError::NoChatTemplate));
        assert!(err.to_string().contains("no chat template"));
    }

    #[test]
    fn python_idioms_and_raise_exception_work() {
        // The shape of Llama-2/Mistral templates: Python string methods, bos/eos, raise_exception.
        let source = "{{ bos_token }}{% for m in messages %}\
            {% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}\
            {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}\
            {% if m['role'] == 'user' %}{{ '[INST] ' + m['content'].strip() + ' [/INST]' }}\
            {% else %}{{ m['content'] | trim + eos_token }}{% endif %}{% endfor %}";
        let template = ChatTemplate::new(source.into(), "<s>".into(), "</s>".into()).unwrap();
        let ok = template
            .render(
                &[
                    ChatMessage::new("user", "  hi  "),
                    ChatMessage::new("assistant", " yo "),
                ],
                false,
                None,
            )
            .unwrap();
        assert_eq!(ok, "<s>[INST] hi [/INST]yo</s>");
        let err = template
            .render(&[ChatMessage::new("assistant", "x")], false, None)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("Conversation roles must alternate"),
            "{err}"
        );
        assert!(ChatTemplate::new("{% for %}".into(), String::new(), String::new()).is_err());
    }
}
