//! Forward-pass tests that need no checkpoint: consistency of varlen batching, chunking and
//! decoding on dummy weights (agreement with HF transformers is tested in `e2e/`).

use super::dense_kv::DenseKv;
use super::*;

fn tiny(arch: &str) -> Model {
    let cfg = match arch {
        "gpt2" => ModelConfig {
            vocab_size: 300,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 4,
            head_dim: 16,
            ffn: 128,
            max_positions: 64,
            ..ModelConfig::preset("gpt2").unwrap()
        },
        _ => ModelConfig::preset("tiny-llama").unwrap(),
    };
    Model::dummy(cfg, 3).unwrap()
}

/// The logits of every position of `tokens`, prefilled in one chunk into `slot`.
pub(crate) fn prefill_all(model: &Model, kv: &DenseKv, slot: u32, tokens: &[u32]) -> Vec<Vec<f32>> {
    let chunk = SeqChunk {
        slot,
        start_pos: 0,
        tokens,
        logits: LogitsWanted::All,
    };
    let logits = model.forward(&[chunk], kv).unwrap();
    logits.rows(0).map(|r| r.to_vec()).collect()
}

/// The largest elementwise |a - b|.
pub(crate) fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn chunked_prefill_and_decode_match_one_shot_prefill() {
    for arch in ["llama", "gpt2"] {
        let model = tiny(arch);
        let tokens: Vec<u32> = (0..20).map(|i| (i * 37 % 250) as u32).collect();
        let kv = DenseKv::new(&model.config, 2, 32);
        let full = prefill_all(&model, &kv, 0, &tokens);
        // Same tokens in three pieces: a chunk of 7, a chunk of 12, then one decode step.
        let mut rows = Vec::new();
        for (start, end) in [(0, 7), (7, 19), (19, 20)] {
            let chunk = SeqChunk {
                slot: 1,
                start_pos: start,
                tokens: &tokens[start..end],
                logits: LogitsWanted::All,
            };
            rows.extend(
                model
                    .forward(&[chunk], &kv)
                    .unwrap()
                    .rows(0)
                    .map(|r| r.to_vec()),
            );
        }
        for (i, (a, b)) in full.iter().zip(&rows).enumerate() {
            assert!(
                max_diff(a, b) < 1e-4,
                "{arch}: position {i} differs by {}",
                max_diff(a, b)
            );
        }
    }
}

#[test]
fn varlen_batch_matches_sequences_run_alone() {
    let model = tiny("llama");
    let a: Vec<u32> = (0..9).map(|i| i * 11 % 500).collect();
    let b: Vec<u32> = (0..5).map(|i| i * 29 % 500 + 3).collect();
    let kv = DenseKv::new(&model.config, 4, 32);
    let alone_a = prefill_all(&model, &kv, 0, &a);
    let alone_b = prefill_all(&model, &kv, 1, &b[..4]);
    // Batch: b decodes its 5th token while a is prefilled from scratch in another slot.
    prefill_all(&model, &kv, 3, &b[..4]);
    let batch = [
        SeqChunk {
            slot: 2,
            start_pos: 0,
            tokens: &a,
            logits: LogitsWanted::Last,
        },
        SeqChunk {
            slot: 3,
            start_pos: 4,
            tokens: &b[4..],
            logits: LogitsWanted::Last,
        },
    ];
    let out = model.forward(&batch, &kv).unwrap();
    let batch_a = out.rows(0).next().unwrap();
    let batch_b = out.rows(1).next().unwrap();
    assert!(max_diff(batch_a, alone_a.last().unwrap()) < 1e-4);
    let alone_b5 = prefill_all(&model, &kv, 1, &b);
    assert!(max_diff(batch_b, alone_b5.last().unwrap()) < 1e-4);
    assert_eq!(alone_b.len(), 4);
}

#[test]
fn bad_tokens_and_positions_are_errors_not_panics() {
    let model = tiny("llama");
    let kv = DenseKv::new(&model.config, 1, 8);
    let bad = [SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &[100_000],
        logits: LogitsWanted::Last,
    }];
    assert!(matches!(
        model.forward(&bad, &kv),
        Err(ModelError::Input(_))
    ));
    let far = [SeqChunk {
        slot: 0,
        start_pos: 10_000,
        tokens: &[1],
        logits: LogitsWanted::Last,
    }];
    assert!(matches!(
        model.forward(&far, &kv),
        Err(ModelError::Input(_))
    ));
}

/// SmolLM2's GGUF keeps its Q4_1 / Q8_0 blocks for every matrix, and decoding from them gives
/// the logits of the f32 matrices (same values, other summation order) at every row count the
/// block path serves and past it.
#[test]
fn gguf_blocks_decode_like_the_f32_matrices() {
    let Some(path) = crate::tokenizer::fixtures::smollm2_gguf() else {
        return;
    };
    let packed = Model::load_gguf(gguf::GgufFile::open(&path).unwrap()).unwrap();
    let layers = packed.config.layers;
    assert_eq!(
        packed.weights.packed_count(),
        4 * layers + 1,
        "every matrix and the head"
    );
    let mut plain = Model::load_gguf(gguf::GgufFile::open(&path).unwrap()).unwrap();
    plain.weights.drop_packed();
    assert_eq!(plain.weights.packed_count(), 0);
    assert_blocks_decode_like_f32(&packed, &plain, &[1, 3, 8, 10]);
}

/// For the GPU, SmolLM2's GGUF loads its block matrices as blocks alone: no f32 copy of any
/// layer matrix (the host holds the file's 4.5–8.5 bits a weight instead of 32), the same blocks
/// as a full load, and the embedding (tied to the head) still in f32 for a vocabulary patch.
#[test]
fn a_gguf_loaded_for_the_gpu_keeps_its_layer_blocks_without_f32_copies() {
    let Some(path) = crate::tokenizer::fixtures::smollm2_gguf() else {
        return;
    };
    let full = Model::load_gguf(gguf::GgufFile::open(&path).unwrap()).unwrap();
    let file = gguf::GgufFile::open(&path).unwrap();
    let config = file.config().unwrap();
    let mut source = gguf::GgufSource::new(file, &config).blocks_only();
    let lean = Model::load(config, &mut source).unwrap();
    let f32_bytes = |m: &Model| -> usize {
        let layers: usize = (m.weights.blocks.iter())
            .flat_map(weights::Block::linears)
            .map(|l| l.weight.len())
            .sum();
        4 * (layers + m.weights.embed.len())
    };
    let layers = lean.weights.blocks.iter().flat_map(weights::Block::linears);
    let full_layers = full.weights.blocks.iter().flat_map(weights::Block::linears);
    for (l, f) in layers.zip(full_layers) {
        assert!(l.weight.is_empty(), "no f32 copy");
        assert_eq!(l.packed, f.packed, "the same blocks");
        assert_eq!(l.out, f.out);
    }
    assert_eq!(
        lean.weights.embed, full.weights.embed,
        "the embedding stays f32"
    );
    assert!(lean.weights.lm_head_packed().is_some());
    let (before, after) = (f32_bytes(&full), f32_bytes(&lean));
    eprintln!("SmolLM2 Q4_1 host f32 weights: {before} bytes in full, {after} for the GPU");
    assert!(after * 3 < before, "{after} of {before}");
}

/// A stack whose parts came as blocks alone but cannot keep blocks (one part has none) decodes
/// those parts: every row has its f32 values.
#[test]
fn a_stack_that_cannot_keep_blocks_decodes_the_parts_that_came_as_blocks() {
    use fused_kernels::cpu::{BlockKind, QuantMatrix};
    let mut block = half::f16::from_f32(0.5).to_bits().to_le_bytes().to_vec();
    block.extend([0x9a; 16]);
    let q = QuantMatrix::new(BlockKind::Q4_0, 1, 32, block).unwrap();
    let plain = vec![0.25f32; 32];
    let l = weights::Linear::stacked(
        2,
        vec![(Vec::new(), Some(q.clone())), (plain.clone(), None)],
    );
    assert!(l.packed.is_none());
    assert_eq!(l.weight[..32], q.dequantize()[..]);
    assert_eq!(l.weight[32..], plain[..]);
}

/// Decode steps of `packed` (its blocks) and `plain` (the same model's f32 matrices) after one
/// prompt, `rows` sequences at a time: the same greedy tokens, logits within 1e-4 of the largest.
pub(crate) fn assert_blocks_decode_like_f32(packed: &Model, plain: &Model, rows_list: &[usize]) {
    let vocab = packed.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..12).map(|i| (100 + i * 311) % vocab).collect();
    for &rows in rows_list {
        let kv = [
            DenseKv::new(&packed.config, rows, 32),
            DenseKv::new(&plain.config, rows, 32),
        ];
        let mut worst = 0.0f32;
        for (m, kv) in [packed, plain].into_iter().zip(&kv) {
            for slot in 0..rows as u32 {
                prefill_all(m, kv, slot, &prompt);
            }
        }
        for step in 0..3u32 {
            let tokens: Vec<[u32; 1]> = (0..rows as u32)
                .map(|s| [(7 + 50 * s + step) % vocab])
                .collect();
            let chunks: Vec<SeqChunk<'_>> = tokens
                .iter()
                .enumerate()
                .map(|(slot, t)| SeqChunk {
                    slot: slot as u32,
                    start_pos: prompt.len() + step as usize,
                    tokens: t,
                    logits: LogitsWanted::Last,
                })
                .collect();
            let a = packed.forward(&chunks, &kv[0]).unwrap();
            let b = plain.forward(&chunks, &kv[1]).unwrap();
            for r in 0..rows {
                let (x, y) = (a.rows(r).next().unwrap(), b.rows(r).next().unwrap());
                let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                worst = worst.max(max_diff(x, y) / scale);
                assert_eq!(
                    sampling::argmax(x),
                    sampling::argmax(y),
                    "{rows} rows, step {step}"
                );
            }
        }
        eprintln!("{rows} decode rows: worst |Δlogit| / max|logit| = {worst:.2e}");
        assert!(worst < 1e-4, "{rows} rows: {worst}");
    }
}

/// An FP8 checkpoint (E4M3 block matrices with a scale per row or per tensor, as vLLM's `fp8`
/// and `compressed-tensors` checkpoints store them) loads on the CPU as its codes times their
/// scales: the same logits as the checkpoint of the decoded values.
#[test]
fn an_fp8_checkpoint_loads_as_its_codes_times_their_scales() {
    let cfg = ModelConfig::preset("tiny-llama").unwrap();
    let dummy::Fp8Checkpoint {
        mut fp8,
        decoded,
        quantized,
    } = dummy::fp8_checkpoint(&cfg, 5).unwrap();
    assert_eq!(
        quantized,
        7 * cfg.layers,
        "q, k, v, o, gate, up, down per layer"
    );
    let dirs = tempfile::tempdir().unwrap();
    let (fp8_dir, decoded_dir) = (dirs.path().join("fp8"), dirs.path().join("decoded"));
    dummy::write_checkpoint(&cfg, &fp8, &fp8_dir).unwrap();
    dummy::write_checkpoint(&cfg, &decoded, &decoded_dir).unwrap();
    let from_fp8 = Model::load_hf_dir(&fp8_dir).unwrap();
    let from_decoded = Model::load_hf_dir(&decoded_dir).unwrap();
    let tokens: Vec<u32> = (0..12).map(|i| (i * 29 % 250) as u32).collect();
    let kv = DenseKv::new(&cfg, 1, 16);
    let a = prefill_all(&from_fp8, &kv, 0, &tokens).concat();
    let b = prefill_all(&from_decoded, &kv, 0, &tokens).concat();
    assert_eq!(max_diff(&a, &b), 0.0);
    // A matrix without its scale is refused, naming it.
    fp8.remove("model.layers.0.mlp.down_proj.weight_scale");
    dummy::write_checkpoint(&cfg, &fp8, &fp8_dir).unwrap();
    let err = Model::load_hf_dir(&fp8_dir).err().expect("no scale");
    assert!(err.to_string().contains("down_proj.weight_scale"), "{err}");
}
