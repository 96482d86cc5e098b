//! `fused-daemon` command line entry point.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "fused-daemon", version, about = "FusedModel serving daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build and evaluate AdaptiVocab domain patch tokenizers.
    Vocab(fused_daemon::vocab::cli::VocabArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Vocab(args) => fused_daemon::vocab::cli::run(args),
    }
}
