//! Dataset sampling against the real SmolLM2 tokenizer (from the GGUF that
//! `scripts/fetch-model.sh` puts in the model cache).

use std::io::Write;
use std::path::PathBuf;

use super::random::{LongMix, RandomSpec};
use super::*;

fn tokenizer() -> Option<RefTokenizer> {
    let cache = std::env::var_os("FUSED_MODEL_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fusedmodel/models"))
        })?;
    let gguf = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        eprintln!(
            "SKIPPED: {} is missing; run scripts/fetch-model.sh to test datasets on the real \
             tokenizer",
            gguf.display()
        );
        return None;
    }
    Some(RefTokenizer::load(&gguf).expect("the cached GGUF holds a tokenizer"))
}

fn temp_file(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(content.as_bytes()).expect("write temp file");
    f
}

#[test]
fn random_prompts_have_the_asked_lengths_and_follow_the_seed() {
    let Some(tok) = tokenizer() else { return };
    let spec = DatasetSpec::Random(RandomSpec {
        input_len: 100,
        output_len: 20,
        range_ratio: 0.0,
        prefix_len: 0,
        long: None,
    });
    let a = spec.sample(&tok, 20, 1).expect("sampled");
    assert_eq!(a.len(), 20);
    let exact = a.iter().filter(|p| p.prompt_len == 100).count();
    assert!(
        exact >= 18,
        "only {exact}/20 prompts are exactly 100 tokens"
    );
    for p in &a {
        assert_eq!(tok.count(&p.text).expect("encodes"), p.prompt_len);
        assert_eq!(p.output_len, 20);
    }
    assert_eq!(a, spec.sample(&tok, 20, 1).expect("sampled"));
    assert_ne!(a, spec.sample(&tok, 20, 2).expect("sampled"));

    let ranged = RandomSpec {
        input_len: 50,
        output_len: 40,
        range_ratio: 0.5,
        prefix_len: 10,
        long: None,
    };
    let b = ranged.sample(&tok, 50, 3).expect("sampled");
    assert!(b.iter().all(|p| (20..=60).contains(&p.output_len)));
    assert!(
        b.iter().all(|p| (30..=90).contains(&p.prompt_len)),
        "prefix 10 + 25..=75"
    );
    let distinct: std::collections::HashSet<usize> = b.iter().map(|p| p.output_len).collect();
    assert!(distinct.len() > 5, "lengths vary with a range ratio");
    assert!(
        RandomSpec {
            range_ratio: 1.0,
            ..ranged
        }
        .sample(&tok, 1, 0)
        .is_err(),
        "a range ratio of 1 is refused"
    );
}

#[test]
fn random_long_prompts_are_mixed_in_at_the_asked_fraction() {
    let Some(tok) = tokenizer() else { return };
    let spec = |fraction: f64| RandomSpec {
        input_len: 20,
        output_len: 4,
        range_ratio: 0.0,
        prefix_len: 0,
        long: Some(LongMix {
            fraction,
            input_len: 300,
        }),
    };
    let prompts = spec(0.25).sample(&tok, 80, 7).expect("sampled");
    let long = prompts.iter().filter(|p| p.prompt_len > 250).count();
    let short = prompts.iter().filter(|p| p.prompt_len < 30).count();
    assert_eq!(long + short, 80, "every prompt is short (20) or long (300)");
    // Binomial(80, 0.25): mean 20, sd 3.9; 8..=32 is beyond 3 sd either side.
    assert!((8..=32).contains(&long), "{long} of 80 prompts are long");
    assert_eq!(prompts, spec(0.25).sample(&tok, 80, 7).expect("sampled"));
    let all = spec(1.0).sample(&tok, 5, 1).expect("sampled");
    assert!(all.iter().all(|p| p.prompt_len > 250));
    for bad in [0.0, -0.1, 1.5, f64::NAN] {
        assert!(
            spec(bad).sample(&tok, 1, 0).is_err(),
            "fraction {bad} is refused"
        );
    }
}

#[test]
fn sharegpt_takes_first_turns_filters_and_cycles() {
    let Some(tok) = tokenizer() else { return };
    let long = "word ".repeat(1500);
    let file = temp_file(&format!(
        r#"[
        {{"id": "a", "conversations": [
            {{"from": "human", "value": "What is the capital of France, please?"}},
            {{"from": "gpt", "value": "The capital of France is Paris, a large city."}}]}},
        {{"id": "short", "conversations": [
            {{"from": "human", "value": "Hi"}}, {{"from": "gpt", "value": "Hello there friend."}}]}},
        {{"id": "one-turn", "conversations": [{{"from": "human", "value": "Only a question here?"}}]}},
        {{"id": "too-long", "conversations": [
            {{"from": "human", "value": "{long}"}}, {{"from": "gpt", "value": "ok ok ok ok ok"}}]}}
    ]"#
    ));
    let spec = DatasetSpec::ShareGpt {
        path: file.path().to_owned(),
        output_len: None,
    };
    let prompts = spec.sample(&tok, 3, 0).expect("sampled");
    assert_eq!(prompts.len(), 3);
    assert!(
        prompts
            .iter()
            .all(|p| p.text.starts_with("What is the capital"))
    );
    let answer = tok
        .count("The capital of France is Paris, a large city.")
        .expect("encodes");
    assert_eq!(prompts[0].output_len, answer);
    let fixed = DatasetSpec::ShareGpt {
        path: file.path().to_owned(),
        output_len: Some(7),
    };
    assert!(
        fixed
            .sample(&tok, 2, 0)
            .expect("sampled")
            .iter()
            .all(|p| p.output_len == 7)
    );
    let bad = temp_file(r#"{"not": "an array"}"#);
    let err = DatasetSpec::ShareGpt {
        path: bad.path().to_owned(),
        output_len: None,
    }
    .sample(&tok, 1, 0);
    assert!(err.is_err_and(|e| e.to_string().contains("ShareGPT")));
}

#[test]
fn text_prompts_are_consecutive_lines_of_at_least_the_asked_length() {
    let Some(tok) = tokenizer() else { return };
    let lines: Vec<String> = (0..200)
        .map(|i| format!("Line {i}: acute bronchitis due to streptococcus, episode {i}"))
        .collect();
    let file = temp_file(&(lines.join("\n\n") + "\n"));
    let spec = DatasetSpec::Text {
        path: file.path().to_owned(),
        input_len: 60,
        output_len: 9,
    };
    let prompts = spec.sample(&tok, 10, 5).expect("sampled");
    assert_eq!(prompts.len(), 10);
    for p in &prompts {
        assert!(p.prompt_len >= 60, "{} tokens", p.prompt_len);
        assert!(
            p.prompt_len < 60 + 25,
            "at most one line more: {}",
            p.prompt_len
        );
        assert_eq!(p.output_len, 9);
        assert_eq!(tok.count(&p.text).expect("encodes"), p.prompt_len);
        let parts: Vec<&str> = p.text.split('\n').collect();
        let first = lines
            .iter()
            .position(|l| l == parts[0])
            .expect("a line of the file");
        for (k, part) in parts.iter().enumerate() {
            assert_eq!(*part, lines[(first + k) % lines.len()], "consecutive lines");
        }
    }
    assert_eq!(prompts, spec.sample(&tok, 10, 5).expect("sampled"));
    let empty = temp_file("\n \n");
    let err = DatasetSpec::Text {
        path: empty.path().to_owned(),
        input_len: 10,
        output_len: 1,
    }
    .sample(&tok, 1, 0);
    assert!(err.is_err_and(|e| e.to_string().contains("no non-empty line")));
    let missing = DatasetSpec::Text {
        path: "/nonexistent/file.txt".into(),
        input_len: 10,
        output_len: 1,
    };
    assert!(missing.sample(&tok, 1, 0).is_err());
}
