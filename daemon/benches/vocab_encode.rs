//! Criterion bench: encode throughput of SmolLM2's tokenizer with and without an AdaptiVocab
//! patch (default options, 10000 swaps, built on the ICD-10-CM training split), on the first
//! 1000 lines of the in-distribution held-out split, one line per call; and the patch step alone.
//!
//! Run: `cargo bench -p fused-daemon --bench vocab_encode` (assets: scripts/fetch-model.sh,
//! scripts/fetch-corpus.sh).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fused_daemon::tokenizer::{Codec, fixtures};
use fused_daemon::vocab::corpus::{read_lines, tokenize};
use fused_daemon::vocab::{BuildOptions, PatchTokenizer, build};

fn encode_all(codec: &Codec, lines: &[String]) -> usize {
    lines
        .iter()
        .map(|l| codec.encode(l, false).expect("encodes").len())
        .sum()
}

fn bench(c: &mut Criterion) {
    let (Some(data), Some(gguf)) = (fixtures::icd10_dir(), fixtures::smollm2_gguf()) else {
        eprintln!("vocab_encode: assets missing (see above); nothing measured");
        return;
    };
    let base = Codec::from_gguf_path(&gguf).expect("GGUF loads");
    let (train, files) = read_lines(&[data.join("train.txt")]).expect("train reads");
    let corpus = tokenize(&base, &train, files, "train").expect("train tokenizes");
    let spec = build(
        &base,
        &corpus,
        &BuildOptions {
            swap: 10_000,
            ..BuildOptions::default()
        },
    )
    .expect("patch builds");
    let patch = PatchTokenizer::from_spec(&spec, String::new()).expect("patch is valid");
    let patched = Codec::from_gguf_path(&gguf)
        .expect("GGUF loads")
        .with_patch(Arc::new(patch))
        .expect("patch fits");
    let (mut held, _) = read_lines(&[data.join("heldout-id.txt")]).expect("held-out reads");
    held.truncate(1000);
    let bytes: u64 = held.iter().map(|l| l.len() as u64).sum();

    let mut group = c.benchmark_group("vocab_encode_smollm2_icd10");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("base", |b| b.iter(|| encode_all(&base, black_box(&held))));
    group.bench_function("patched", |b| {
        b.iter(|| encode_all(&patched, black_box(&held)))
    });
    // The patch step alone (expand removed tokens + n-gram scan) on pre-encoded base ids.
    let base_ids: Vec<Vec<u32>> = held
        .iter()
        .map(|l| base.encode(l, false).expect("encodes"))
        .collect();
    let step = patched.patch().expect("the codec has a patch").clone();
    group.bench_function("patch step only", |b| {
        b.iter(|| {
            base_ids
                .iter()
                .map(|ids| step.patch_ids(black_box(ids)).len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
