//! The base tokenizer: from tokenizer.json or GGUF metadata, chat template, special ids.
