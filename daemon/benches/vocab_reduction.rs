//! Bench binary: AdaptiVocab token reduction and encode throughput on ICD-10-CM.
//!
//! For SmolLM2's and Mistral-7B's tokenizers, builds patches on the training split for several
//! variants and swap sizes, then measures on the two held-out splits (in-distribution: every
//! 10th line; chapter-shifted: ICD chapters I, X, XV, XVII never seen in training) the token
//! reduction against the base tokenizer and the encode throughput with and without the patch
//! (one thread, one line per call, best of 3 passes, same process). Prints a Markdown table.
//!
//! Run: `cargo bench -p fused-daemon --bench vocab_reduction` (assets: scripts/fetch-model.sh,
//! scripts/fetch-tokenizers.sh, scripts/fetch-corpus.sh).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use fused_daemon::tokenizer::{Codec, fixtures};
use fused_daemon::vocab::corpus::{read_lines, tokenize};
use fused_daemon::vocab::eval::evaluate;
use fused_daemon::vocab::{BuildOptions, MatchRule, OverlapCorrection, PatchTokenizer, build};

struct Variant {
    name: &'static str,
    options: fn(usize) -> BuildOptions,
    swaps: &'static [usize],
}

const ALL_SWAPS: &[usize] = &[2_000, 5_000, 10_000, 20_000];
const ONE_SWAP: &[usize] = &[10_000];

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "paper (within-word, pairwise, first-selected)",
            options: BuildOptions::paper,
            swaps: ALL_SWAPS,
        },
        Variant {
            name: "default (cross-word, occurrence, longest)",
            options: |swap| BuildOptions {
                swap,
                ..BuildOptions::default()
            },
            swaps: ALL_SWAPS,
        },
        Variant {
            name: "paper + longest match",
            options: |swap| BuildOptions {
                match_rule: MatchRule::Longest,
                ..BuildOptions::paper(swap)
            },
            swaps: ONE_SWAP,
        },
        Variant {
            name: "paper + occurrence correction",
            options: |swap| BuildOptions {
                overlap: OverlapCorrection::Occurrence,
                ..BuildOptions::paper(swap)
            },
            swaps: ONE_SWAP,
        },
        Variant {
            name: "paper + cross-word",
            options: |swap| BuildOptions {
                cross_word: true,
                ..BuildOptions::paper(swap)
            },
            swaps: ONE_SWAP,
        },
        Variant {
            name: "default, first-selected",
            options: |swap| BuildOptions {
                swap,
                match_rule: MatchRule::FirstSelected,
                ..BuildOptions::default()
            },
            swaps: ONE_SWAP,
        },
        Variant {
            name: "default, max n 5",
            options: |swap| BuildOptions {
                swap,
                max_n: 5,
                ..BuildOptions::default()
            },
            swaps: ONE_SWAP,
        },
    ]
}

type Loader = fn(&Path) -> fused_daemon::tokenizer::Result<Codec>;

fn lines_of(path: &Path) -> Vec<String> {
    read_lines(&[path.to_owned()]).expect("corpus file reads").0
}

/// Chapter-shifted lines grouped by held-out chapter (from all.tsv, codes kept).
fn chapters(dir: &Path) -> Vec<(&'static str, Vec<String>)> {
    let groups: [(&str, &[char]); 4] = [
        ("I (A-B)", &['A', 'B']),
        ("X (J)", &['J']),
        ("XV (O)", &['O']),
        ("XVII (Q)", &['Q']),
    ];
    let tsv = std::fs::read_to_string(dir.join("all.tsv")).expect("all.tsv reads");
    groups
        .iter()
        .map(|(name, letters)| {
            let lines = tsv
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .filter(|(code, _)| code.starts_with(*letters))
                .map(|(_, text)| text.to_owned())
                .collect();
            (*name, lines)
        })
        .collect()
}

fn main() {
    let (Some(data), Some(gguf), Some(mistral)) = (
        fixtures::icd10_dir(),
        fixtures::smollm2_gguf(),
        fixtures::mistral_dir(),
    ) else {
        eprintln!("vocab_reduction: assets missing (see above); nothing measured");
        std::process::exit(1);
    };
    let train = lines_of(&data.join("train.txt"));
    let held_id = lines_of(&data.join("heldout-id.txt"));
    let held_ch = lines_of(&data.join("heldout-chapters.txt"));
    let by_chapter = chapters(&data);
    let tokenizers: [(&str, PathBuf, Loader); 2] = [
        ("SmolLM2", gguf, Codec::from_gguf_path),
        ("Mistral-7B", mistral, Codec::from_hf_dir),
    ];

    println!(
        "| tokenizer | variant | N | added | build s | in-dist reduction | chapter-shifted reduction | base MB/s | patched MB/s | ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut chapter_rows = Vec::new();
    for (tok_name, path, load) in &tokenizers {
        let base = load(path).expect("base tokenizer loads");
        let started = Instant::now();
        let corpus = tokenize(&base, &train, Vec::new(), "train").expect("train tokenizes");
        let tokenize_s = started.elapsed().as_secs_f64();
        for variant in variants() {
            for &swap in variant.swaps {
                let options = (variant.options)(swap);
                let started = Instant::now();
                let spec = build(&base, &corpus, &options).expect("patch builds");
                let build_s = tokenize_s + started.elapsed().as_secs_f64();
                let patch =
                    PatchTokenizer::from_spec(&spec, String::new()).expect("patch is valid");
                let patched = load(path)
                    .expect("base tokenizer loads")
                    .with_patch(Arc::new(patch))
                    .expect("patch fits");
                let id = evaluate(&base, &patched, "in-dist", &held_id, 3).expect("eval runs");
                let ch = evaluate(&base, &patched, "chapters", &held_ch, 1).expect("eval runs");
                assert_eq!(
                    id.round_trip_failures + ch.round_trip_failures,
                    0,
                    "exact round trip"
                );
                println!(
                    "| {tok_name} | {} | {swap} | {} | {build_s:.1} | {:.1} % | {:.1} % | {:.2} | {:.2} | {:.2} |",
                    variant.name,
                    spec.ngrams.len(),
                    100.0 * id.reduction(),
                    100.0 * ch.reduction(),
                    id.base_mb_s,
                    id.patched_mb_s,
                    id.throughput_ratio()
                );
                if swap == 10_000 && variant.swaps == ALL_SWAPS {
                    let per: Vec<String> = by_chapter
                        .iter()
                        .map(|(name, lines)| {
                            let r = evaluate(&base, &patched, name, lines, 1).expect("eval runs");
                            format!("{:.1} %", 100.0 * r.reduction())
                        })
                        .collect();
                    chapter_rows.push(format!(
                        "| {tok_name} | {} | {} |",
                        variant.name,
                        per.join(" | ")
                    ));
                }
            }
        }
    }
    println!("\nChapter-shifted reduction by held-out chapter (N = 10000):\n");
    let names: Vec<&str> = by_chapter.iter().map(|(n, _)| *n).collect();
    println!("| tokenizer | variant | {} |", names.join(" | "));
    println!("|---|---|{}", "---:|".repeat(names.len()));
    for row in chapter_rows {
        println!("{row}");
    }
}
