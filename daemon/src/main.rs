//! `fused-daemon`: the FusedModel serving daemon's command line.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Parser, Subcommand};
use fused_daemon::eval;
use fused_daemon::fetch::{self, FetchArgs};
use fused_daemon::model::gguf::GgufFile;
use fused_daemon::model::{Model, ModelConfig, dummy};
use fused_daemon::serve::{self, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "fused-daemon",
    version,
    about = "Serve a domain-tuned LLM with an OpenAI-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API (the main job).
    Serve(Box<ServeArgs>),
    /// Build and evaluate AdaptiVocab domain patch tokenizers.
    Vocab(fused_daemon::vocab::cli::VocabArgs),
    /// Write the logits of two prompts (token ids) computed three ways, as safetensors, for
    /// comparison with a reference implementation.
    Logits {
        /// A GGUF file or an HF directory.
        #[arg(long)]
        model: std::path::PathBuf,
        /// Comma-separated token ids of prompt A (at least 2).
        #[arg(long, value_delimiter = ',')]
        a: Vec<u32>,
        /// Comma-separated token ids of prompt B.
        #[arg(long, value_delimiter = ',')]
        b: Vec<u32>,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Bits per byte of a model on text (one sequence per line), optionally through a
    /// vocabulary patch: the quality check of a patch tokenizer.
    Bpb {
        /// A GGUF file or an HF directory.
        #[arg(long)]
        model: std::path::PathBuf,
        /// AdaptiVocab patch directory (embedding and LM head are patched as when serving).
        #[arg(long)]
        patch_tokenizer: Option<std::path::PathBuf>,
        /// Text file, one sequence per non-blank line.
        #[arg(long)]
        text: std::path::PathBuf,
        /// Lines scored at most (from the start of the file).
        #[arg(long, default_value_t = 500)]
        lines: usize,
    },
    /// Fetch an artifact into the node-local cache, verify its SHA-256 and link it (the init
    /// container of every daemon Pod).
    Fetch(FetchArgs),
    /// Write a dummy-weight model as an HF checkpoint (config.json + model.safetensors).
    ExportDummy {
        /// Shape preset.
        #[arg(long)]
        shape: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = parse();
    let otlp_endpoint = match &cli.command {
        Command::Serve(args) => args.otlp_traces_endpoint.clone(),
        _ => None,
    };
    // Flushes the last spans when main returns.
    let _otlp = init_logging(otlp_endpoint.as_deref())?;
    match cli.command {
        Command::Serve(args) => {
            // Shared locks on the fetched artifacts it serves: the fetch step's cache eviction
            // leaves them alone while this process runs.
            let _held: Vec<fetch::EntryHold> = (args.model_spec().ok().flatten())
                .map(std::path::PathBuf::from)
                .into_iter()
                .chain(args.patch_tokenizer.clone())
                .filter_map(|path| fetch::hold_entry(&path))
                .collect();
            serve::run(*args)
        }
        Command::Vocab(args) => fused_daemon::vocab::cli::run(args),
        Command::Logits { model, a, b, out } => {
            // Weights only: reference fixtures may carry placeholder tokenizers.
            let model = if model.is_dir() {
                Model::load_hf_dir(&model)?
            } else {
                Model::load_gguf(GgufFile::open(&model)?)?
            };
            eval::write_logits(&model, &a, &b, &out)
        }
        Command::Bpb {
            model,
            patch_tokenizer,
            text,
            lines,
        } => {
            let (mut model, codec) = serve::open_model(&model, None)?;
            let codec = match patch_tokenizer {
                Some(dir) => serve::apply_patch(&mut model, codec, &dir, None)?,
                None => codec,
            };
            let text = std::fs::read_to_string(&text)?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(lines)
                .map(str::to_owned)
                .collect();
            let prefix = codec.eos_ids().first().copied().unwrap_or(0);
            let bpb = eval::bits_per_byte(&model, &codec, &lines, prefix)?;
            println!("{bpb:.4} bits per byte over {} lines", lines.len());
            Ok(())
        }
        Command::Fetch(args) => fetch::run(args),
        Command::ExportDummy { shape, seed, out } => {
            let config = ModelConfig::preset(&shape).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown shape `{shape}` ({})",
                    ModelConfig::PRESETS.join(", ")
                )
            })?;
            dummy::save_safetensors(&config, seed, &out)?;
            println!("{}", out.display());
            Ok(())
        }
    }
}

/// The command line, with vLLM's short spellings (`-tp 2`) expanded, and a vLLM flag that
/// `serve` does not take refused with the reason instead of clap's bare "unexpected argument".
fn parse() -> Cli {
    let args = std::env::args_os().map(|arg| match arg.to_str() {
        Some(short) => fused_daemon::vllm_flags::expand_short(short)
            .map_or(arg.clone(), std::ffi::OsString::from),
        None => arg,
    });
    match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let unknown = match (error.kind(), error.get(ContextKind::InvalidArg)) {
                (ErrorKind::UnknownArgument, Some(ContextValue::String(arg))) => {
                    fused_daemon::vllm_flags::refusal(arg)
                }
                _ => None,
            };
            match unknown {
                Some(message) => {
                    eprintln!("error: {message}");
                    std::process::exit(2);
                }
                None => error.exit(),
            }
        }
    }
}

/// Log lines on stderr: `RUST_LOG` filters (default `info`); `FUSED_LOG_FORMAT=json` writes one
/// JSON object per line (span fields such as `request_id` included) for log pipelines; colours
/// only on a terminal. With an OTLP endpoint, spans are exported too.
fn init_logging(
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<Option<fused_daemon::otlp::OtlpExport>> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if std::env::var("FUSED_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        fmt.json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).boxed()
    };
    let (otlp, export) = match otlp_endpoint {
        Some(endpoint) => {
            let (layer, export) = fused_daemon::otlp::layer(endpoint)?;
            (Some(layer), Some(export))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otlp)
        .try_init()?;
    if let Some(endpoint) = otlp_endpoint {
        tracing::info!(endpoint, "exporting spans over OTLP/HTTP");
    }
    Ok(export)
}
