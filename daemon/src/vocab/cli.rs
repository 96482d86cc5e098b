//! `fused-daemon vocab …`: build a patch, initialise its embedding rows, evaluate it.
//! Argument parsing and reporting only; the work is done by the rest of `vocab`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::artifact::PatchArtifact;
use super::builder::{BuildOptions, build};
use super::corpus::{read_lines, tokenize};
use super::embeddings::{ModelMatrices, init_rows};
use super::eval::evaluate;
use super::matcher::MatchRule;
use super::ngrams::OverlapCorrection;
use super::serving::attach_tokenizer;
use crate::tokenizer::Codec;

/// AdaptiVocab domain patch tokenizers.
#[derive(Debug, Args)]
pub struct VocabArgs {
    #[command(subcommand)]
    pub command: VocabCommand,
}

#[derive(Debug, Subcommand)]
pub enum VocabCommand {
    /// Build a patch: swap N rare tokens for N frequent domain n-grams.
    Build(BuildArgs),
    /// Compute the new embedding / LM-head rows from the base model's weights.
    InitEmbeddings(InitEmbeddingsArgs),
    /// Measure a patch on held-out text: token reduction, encode throughput, round trip.
    Eval(EvalArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Base tokenizer: a model .gguf, a tokenizer.json, or a directory holding one.
    #[arg(long)]
    pub base: PathBuf,
    /// Domain text files (one sequence per non-blank line).
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Number of tokens to swap.
    #[arg(long)]
    pub swap: usize,
    /// Output directory of the patch artifact.
    #[arg(long)]
    pub out: PathBuf,
    /// Let n-grams span words (phrase tokens such as "due to"); `--cross-word false` keeps them
    /// within words as in the paper.
    #[arg(long, num_args = 0..=1, default_value_t = BuildOptions::default().cross_word,
        default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cross_word: bool,
    /// Longest n-gram, in base tokens.
    #[arg(long, default_value_t = BuildOptions::default().max_n)]
    pub max_n: usize,
    /// Which n-gram wins when several match at one position.
    #[arg(long, value_enum, default_value_t = BuildOptions::default().match_rule)]
    pub match_rule: MatchRule,
    /// How picking an n-gram corrects the counts of those it overlaps.
    #[arg(long, value_enum, default_value_t = BuildOptions::default().overlap)]
    pub overlap: OverlapCorrection,
    /// Ignore n-grams seen fewer times than this.
    #[arg(long, default_value_t = BuildOptions::default().min_count)]
    pub min_count: u32,
    /// AdaptiVocab exactly as published (within-word, max n 3, pairwise correction,
    /// first-selected matching); overrides the options above.
    #[arg(long)]
    pub paper: bool,
}

#[derive(Debug, Args)]
pub struct InitEmbeddingsArgs {
    /// The patch artifact directory (updated in place).
    #[arg(long)]
    pub patch: PathBuf,
    /// The base model whose weights the rows are computed from: a .gguf file, or a safetensors
    /// checkpoint directory (Llama family; config.json and the tokenizer beside the weights).
    #[arg(long)]
    pub model: PathBuf,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Base tokenizer the patch was built for (.gguf, tokenizer.json or directory).
    #[arg(long)]
    pub base: PathBuf,
    /// The patch artifact directory.
    #[arg(long)]
    pub patch: PathBuf,
    /// Held-out text files.
    #[arg(long, num_args = 1.., required = true)]
    pub text: Vec<PathBuf>,
    /// Encode passes per file for throughput (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub passes: usize,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `vocab` subcommand.
pub fn run(args: VocabArgs) -> anyhow::Result<()> {
    match args.command {
        VocabCommand::Build(a) => run_build(a),
        VocabCommand::InitEmbeddings(a) => run_init_embeddings(a),
        VocabCommand::Eval(a) => run_eval(a),
    }
}

fn load_codec(path: &Path) -> anyhow::Result<Codec> {
    Codec::from_path(path)
        .with_context(|| format!("loading the base tokenizer from {}", path.display()))
}

fn run_build(a: BuildArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let codec = load_codec(&a.base)?;
    let options = if a.paper {
        BuildOptions::paper(a.swap)
    } else {
        BuildOptions {
            swap: a.swap,
            max_n: a.max_n,
            cross_word: a.cross_word,
            match_rule: a.match_rule,
            min_count: a.min_count,
            overlap: a.overlap,
        }
    };
    let (lines, files) = read_lines(&a.corpus)?;
    let corpus = tokenize(&codec, &lines, files, "tokenizing corpus")?;
    let spec = build(&codec, &corpus, &options)?;
    let digest = PatchArtifact::save(&a.out, &spec)?;
    let b = &spec.build;
    eprintln!(
        "removed {} tokens, added {} n-grams; corpus {} lines, {} → {} tokens ({:.1} % fewer) in {:.1} s",
        spec.removed.len(),
        spec.ngrams.len(),
        b.corpus_lines,
        b.corpus_base_tokens,
        b.corpus_patched_tokens,
        100.0 * (1.0 - b.corpus_patched_tokens as f64 / b.corpus_base_tokens.max(1) as f64),
        started.elapsed().as_secs_f64()
    );
    let top: Vec<String> = spec
        .ngrams
        .iter()
        .take(12)
        .map(|g| format!("{:?}×{}", g.text, g.count))
        .collect();
    eprintln!("first n-grams: {}", top.join(" "));
    println!(
        "{digest}  {}",
        a.out.join(super::artifact::PATCH_FILE).display()
    );
    Ok(())
}

fn run_init_embeddings(a: InitEmbeddingsArgs) -> anyhow::Result<()> {
    let artifact = PatchArtifact::load(&a.patch, None)?;
    let model = ModelMatrices::open(&a.model)?;
    let rows = init_rows(&artifact.spec, &model)?;
    let info = super::artifact::save_rows(&artifact.dir, &rows, model.name.clone())?;
    let mut spec = artifact.spec;
    spec.embeddings = Some(info);
    let digest = PatchArtifact::save(&artifact.dir, &spec)?;
    eprintln!(
        "{} rows of {} for input embedding and LM head (tied: {}) from {}",
        rows.ids.len(),
        rows.hidden,
        model.head.is_none(),
        model.name
    );
    println!(
        "{digest}  {}",
        artifact.dir.join(super::artifact::PATCH_FILE).display()
    );
    Ok(())
}

fn run_eval(a: EvalArgs) -> anyhow::Result<()> {
    let artifact = PatchArtifact::load(&a.patch, None)?;
    let base = load_codec(&a.base)?;
    let patched = attach_tokenizer(&artifact, load_codec(&a.base)?)?;
    if !a.json {
        println!(
            "| text | lines | MB | base tokens | patched tokens | reduction | base MB/s | patched MB/s | ratio | round-trip failures |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    for path in &a.text {
        let (lines, files) = read_lines(std::slice::from_ref(path))?;
        let name = files
            .first()
            .map_or_else(|| path.display().to_string(), |f| f.name.clone());
        let r = evaluate(&base, &patched, &name, &lines, a.passes)?;
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!(
                "| {} | {} | {:.2} | {} | {} | {:.1} % | {:.2} | {:.2} | {:.2} | {} |",
                r.name,
                r.lines,
                r.bytes as f64 / 1e6,
                r.base_tokens,
                r.patched_tokens,
                100.0 * r.reduction(),
                r.base_mb_s,
                r.patched_mb_s,
                r.throughput_ratio(),
                r.round_trip_failures
            );
        }
        anyhow::ensure!(
            r.round_trip_failures == 0,
            "{} lines of {} do not round-trip",
            r.round_trip_failures,
            r.name
        );
    }
    Ok(())
}
