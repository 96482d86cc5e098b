//! `fused-daemon`: the FusedModel serving daemon's command line.

use clap::{Parser, Subcommand};
use fused_daemon::fetch::{self, FetchArgs};
use fused_daemon::model::{ModelConfig, dummy};
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve::run(*args),
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
