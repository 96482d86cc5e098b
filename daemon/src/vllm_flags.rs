//! vLLM's `vllm serve` flags as `fused-daemon serve` sees them: the ones it takes (under vLLM's
//! name, as aliases of its own flags), the ones it accepts because they ask for what it does
//! anyway, and the ones it refuses with the reason — one table, which the refusal message, the
//! README's flag map and the tests all read.
//!
//! Must not: parse arguments (clap does); this module only explains flags clap did not know.

/// How `fused-daemon serve` treats one vLLM flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Taken under vLLM's name; the string is our flag of the same meaning.
    Alias(&'static str),
    /// Refused with this reason (what to do instead).
    Refused(&'static str),
}

/// vLLM flags a user is likely to pass, and what `fused-daemon serve` does with each.
pub const VLLM_FLAGS: &[(&str, Support)] = &[
    (
        "MODEL (positional)",
        Support::Alias("MODEL (positional) or --model"),
    ),
    ("--model", Support::Alias("--model")),
    ("--served-model-name", Support::Alias("--served-model-name")),
    ("--host", Support::Alias("--host")),
    ("--port", Support::Alias("--port")),
    ("--api-key", Support::Alias("--api-key")),
    ("--max-model-len", Support::Alias("--max-context")),
    ("--max-num-seqs", Support::Alias("--max-seqs")),
    ("--max-num-batched-tokens", Support::Alias("--token-budget")),
    (
        "--gpu-memory-utilization",
        Support::Alias("--gpu-memory-utilization"),
    ),
    ("--enforce-eager", Support::Alias("--no-cuda-graphs")),
    ("--chat-template", Support::Alias("--chat-template")),
    (
        "--disable-log-requests",
        Support::Alias("--disable-log-requests"),
    ),
    ("--seed", Support::Alias("--seed")),
    ("--dtype", Support::Alias("--dtype")),
    ("--tokenizer", Support::Alias("--tokenizer")),
    ("--load-format", Support::Alias("--load-format")),
    ("--device", Support::Alias("--device")),
    (
        "--tensor-parallel-size",
        Support::Alias("--tensor-parallel-size (1 only)"),
    ),
    (
        "--pipeline-parallel-size",
        Support::Alias("--pipeline-parallel-size (1 only)"),
    ),
    ("--trust-remote-code", Support::Alias("--trust-remote-code")),
    (
        "--enable-chunked-prefill",
        Support::Alias("--enable-chunked-prefill"),
    ),
    (
        "--enable-prefix-caching",
        Support::Alias("--enable-prefix-caching (the default)"),
    ),
    (
        "--no-enable-prefix-caching",
        Support::Alias("--no-enable-prefix-caching"),
    ),
    ("--disable-log-stats", Support::Alias("--disable-log-stats")),
    (
        "--block-size",
        Support::Refused(
            "KV pages are sized in bytes: use --kv-block-size (a multiple of 2 MiB); \
             vllm:cache_config_info reports the tokens one page holds",
        ),
    ),
    ("--quantization", Support::Alias("--quantization")),
    (
        "--kv-cache-dtype",
        Support::Refused("KV is cached in the compute type (f32 on the CPU, bf16 on the GPU)"),
    ),
    (
        "--no-enable-chunked-prefill",
        Support::Refused("prefills are chunked by Sarathi; use --scheduler prefill-first"),
    ),
    (
        "--swap-space",
        Support::Refused("preempted sequences are recomputed, never swapped"),
    ),
    (
        "--cpu-offload-gb",
        Support::Refused("weights stay on one device"),
    ),
    (
        "--data-parallel-size",
        Support::Refused("run one replica per GPU (the operator scales replicas)"),
    ),
    (
        "--enable-lora",
        Support::Refused("LoRA adapters are not supported"),
    ),
    (
        "--lora-modules",
        Support::Refused("LoRA adapters are not supported"),
    ),
    (
        "--speculative-config",
        Support::Refused("speculative decoding is not supported"),
    ),
    (
        "--revision",
        Support::Refused(
            "models are local files: fetch a revision with `fused-daemon fetch --uri hf://org/name@REV`",
        ),
    ),
    (
        "--download-dir",
        Support::Refused("models are local files: `fused-daemon fetch --cache-dir DIR`"),
    ),
    (
        "--tokenizer-mode",
        Support::Refused("the tokenizer is the model's tokenizer.json or GGUF vocabulary"),
    ),
    (
        "--max-logprobs",
        Support::Refused("logprobs are bounded per request (top_logprobs ≤ 20)"),
    ),
    (
        "--ssl-keyfile",
        Support::Refused("terminate TLS in front of the daemon (Ingress, service mesh)"),
    ),
    (
        "--ssl-certfile",
        Support::Refused("terminate TLS in front of the daemon (Ingress, service mesh)"),
    ),
    (
        "--root-path",
        Support::Refused("routes are served at /; rewrite paths in the proxy"),
    ),
    (
        "--allowed-origins",
        Support::Refused("no CORS headers are sent; add them in the proxy"),
    ),
    (
        "--config",
        Support::Refused("flags are given on the command line (or FUSED_* variables)"),
    ),
    (
        "--compilation-config",
        Support::Refused(
            "kernels are compiled by NVRTC at start-up; CUDA graphs: --no-cuda-graphs",
        ),
    ),
    (
        "--uvicorn-log-level",
        Support::Refused("log levels come from RUST_LOG (default info)"),
    ),
    (
        "--hf-overrides",
        Support::Refused("edit the model's config.json instead"),
    ),
    (
        "--max-seq-len-to-capture",
        Support::Refused("decode graphs cover every batch up to --max-seqs"),
    ),
];

/// vLLM's two-letter short flags (argparse spells them `-tp 2`; clap would read `-t -p`).
const SHORT_FLAGS: &[(&str, &str)] = &[
    ("-tp", "--tensor-parallel-size"),
    ("-pp", "--pipeline-parallel-size"),
    ("-dp", "--data-parallel-size"),
    ("-q", "--quantization"),
];

/// The long flag for one of vLLM's short spellings (`-tp` → `--tensor-parallel-size`).
pub fn expand_short(arg: &str) -> Option<&'static str> {
    SHORT_FLAGS
        .iter()
        .find(|(short, _)| *short == arg)
        .map(|(_, long)| *long)
}

/// What to tell a user who passed `arg` (`--flag` or `--flag=value`) that clap did not know:
/// the reason if it is a vLLM flag this server refuses.
pub fn refusal(arg: &str) -> Option<String> {
    let flag = arg.split_once('=').map_or(arg, |(flag, _)| flag);
    VLLM_FLAGS.iter().find_map(|(name, support)| match support {
        Support::Refused(reason) if *name == flag => Some(format!(
            "`{flag}` is a vLLM flag that fused-daemon does not support: {reason} \
             (README.md, \"vLLM's command line\", maps every vLLM flag)"
        )),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::ServeArgs;
    use clap::{Args, Command};

    fn serve_command() -> Command {
        ServeArgs::augment_args(Command::new("serve"))
    }

    #[test]
    fn every_alias_in_the_table_is_a_serve_flag_under_vllms_name() {
        let command = serve_command();
        for (name, support) in VLLM_FLAGS {
            let (Support::Alias(_), Some(long)) = (support, name.strip_prefix("--")) else {
                continue;
            };
            let found = command.get_arguments().any(|a| {
                a.get_long() == Some(long)
                    || a.get_all_aliases().is_some_and(|all| all.contains(&long))
            });
            assert!(
                found,
                "{name} is listed as taken but `serve` has no such flag"
            );
        }
    }

    #[test]
    fn refused_flags_are_not_serve_flags_and_get_their_reason() {
        let command = serve_command();
        for (name, support) in VLLM_FLAGS {
            let Support::Refused(reason) = support else {
                continue;
            };
            let long = name.trim_start_matches("--");
            assert!(
                !command.get_arguments().any(|a| a.get_long() == Some(long)),
                "{name} is refused but `serve` takes it"
            );
            let message = refusal(&format!("{name}=x")).expect("refused");
            assert!(
                message.contains(reason) && message.contains(name),
                "{message}"
            );
        }
        assert_eq!(refusal("--no-such-flag"), None);
        assert_eq!(expand_short("-tp"), Some("--tensor-parallel-size"));
        assert_eq!(expand_short("-q"), Some("--quantization"));
        assert!(refusal(expand_short("-dp").unwrap()).is_some());
        assert_eq!(expand_short("-x"), None);
        assert_eq!(refusal("--model"), None);
    }

    #[test]
    fn the_readme_maps_every_flag_of_the_table() {
        let readme = include_str!("../../README.md");
        for (name, support) in VLLM_FLAGS {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}`")))
                .unwrap_or_else(|| panic!("README.md has no row for `{name}`"));
            match support {
                Support::Alias(ours) => assert!(row.contains(ours), "{row} should name {ours}"),
                Support::Refused(_) => assert!(row.contains("not supported"), "{row}"),
            }
        }
    }
}
