//! CPU decode from the checkpoint's blocks against the f32 matrices, on the real SmolLM2-135M
//! GGUF (Q4_1 layers, Q8_0 head) and on its weights requantized as llama.cpp's Q4_K_M mix
//! (Q4_K, Q6_K for V / down in a third of the layers and for the head; Q5_0 / Q8_0 where a row
//! is not a whole 256-weight super-block): (1) each matrix product of a decode step at 1–16
//! rows, block product vs f32 GEMM (where `PACKED_MAX_ROWS` comes from); (2) whole decode steps
//! of the model at batch 1, 2, 4, 8 with and without the blocks. Rounds alternate between the two
//! so that load on this machine hits both; medians; ratios in the same run.
//!
//! `cargo bench -p fused-daemon --bench cpu_decode` (≈ 2 min; needs `scripts/fetch-model.sh`).

mod common;

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use common::{median, time};
use fused_daemon::model::dense_kv::DenseKv;
use fused_daemon::model::gguf::GgufFile;
use fused_daemon::model::{LogitsWanted, Model, SeqChunk};
use fused_daemon::tokenizer::fixtures;
use fused_kernels::cpu;

fn main() {
    let Some(path) = fixtures::smollm2_gguf() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let k_mix = dir.path().join("SmolLM2-135M-Instruct.Q4_K_M-style.gguf");
    requantize_q4_k_m(&path, &k_mix);
    for (label, path) in [
        ("Q4_1 as published", path.as_path()),
        ("Q4_K_M-style", &k_mix),
    ] {
        report(label, path);
    }
}

/// llama.cpp's Q4_K_M choice for a tensor of `layers` blocks: Q6_K for the head, and for V and
/// down in the first and last eighth of the layers and every third between; Q4_K elsewhere;
/// 1-D tensors f32. A row that is not whole super-blocks falls back to Q5_0 (for Q4_K) or Q8_0
/// (for Q6_K), as llama.cpp does.
fn q4_k_m_format(name: &str, layers: usize, inner: usize, dims: usize) -> GgmlDType {
    if dims < 2 {
        return GgmlDType::F32;
    }
    let layer = name
        .strip_prefix("blk.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse::<usize>().ok());
    let more_bits = |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
    let wide = name == "output.weight"
        || ((name.contains("attn_v") || name.contains("ffn_down")) && layer.is_some_and(more_bits));
    match (wide, inner.is_multiple_of(256)) {
        (true, true) => GgmlDType::Q6K,
        (true, false) => GgmlDType::Q8_0,
        (false, true) => GgmlDType::Q4K,
        (false, false) => GgmlDType::Q5_0,
    }
}

/// Writes the tensors of the GGUF at `src` to `dst` in [`q4_k_m_format`]s, metadata unchanged.
fn requantize_q4_k_m(src: &Path, dst: &Path) {
    let mut reader = File::open(src).expect("opens");
    let content = Content::read(&mut reader).expect("a GGUF");
    let layers = content
        .metadata
        .get("llama.block_count")
        .and_then(|v| v.to_u32().ok())
        .expect("llama.block_count") as usize;
    let mut tensors = Vec::new();
    for name in content.tensor_infos.keys() {
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .expect("reads");
        let values = q.dequantize(&Device::Cpu).expect("dequantizes");
        let dims = values.dims().to_vec();
        let inner = dims.last().copied().unwrap_or(1);
        let format = q4_k_m_format(name, layers, inner, dims.len());
        let q = QTensor::quantize(&values, format).expect("quantizes");
        tensors.push((name.clone(), q));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = File::create(dst).expect("creates");
    gguf_file::write(&mut out, &metadata, &tensors).expect("writes");
}

fn report(label: &str, path: &Path) {
    let load = || Model::load_gguf(GgufFile::open(path).expect("GGUF opens")).expect("loads");
    let packed = load();
    let mut plain = load();
    plain.weights.drop_packed();
    println!(
        "\n## SmolLM2-135M, {label}: {} matrices with blocks; threads {}",
        packed.weights.packed_count(),
        rayon::current_num_threads()
    );

    println!("\n| matrix | formats | in→out | rows | blocks µs | f32 GEMM µs | f32 / blocks |");
    println!("|---|---|---|---:|---:|---:|---:|");
    let block = &packed.weights.blocks[0];
    let head = packed
        .weights
        .lm_head_packed()
        .expect("the head has blocks");
    let mut shapes: Vec<(&str, &fused_kernels::cpu::QuantMatrix, &[f32])> = Vec::new();
    for (name, layer) in ["qkv", "o", "gate_up", "down"]
        .into_iter()
        .zip(block.linears())
    {
        shapes.push((name, layer.packed.as_ref().expect("blocks"), &layer.weight));
    }
    shapes.push(("lm_head", head, packed.weights.lm_head()));
    for (name, q, w) in shapes {
        for rows in [1usize, 2, 4, 8, 16] {
            let x: Vec<f32> = (0..rows * q.inner())
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut y = vec![0.0f32; rows * q.out()];
            let (mut tq, mut tf) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                tq.push(time(15, || q.matmul(&x, rows, &mut y)));
                tf.push(time(15, || {
                    cpu::linear(&x, w, None, rows, q.out(), &mut y);
                }));
            }
            let (tq, tf) = (median(tq), median(tf));
            println!(
                "| {name} | {:?} | {}→{} | {rows} | {:.1} | {:.1} | {:.2}× |",
                q.kinds(),
                q.inner(),
                q.out(),
                tq * 1e6,
                tf * 1e6,
                tf / tq
            );
        }
    }

    println!("\n| batch | blocks ms/step | f32 ms/step | f32 / blocks | blocks tok/s |");
    println!("|---:|---:|---:|---:|---:|");
    let prompt: Vec<u32> = (0..64).map(|i| 200 + i * 97).collect();
    for batch in [1usize, 2, 4, 8] {
        let mut per = [Vec::new(), Vec::new()];
        for _round in 0..3 {
            for (which, model) in [&packed, &plain].into_iter().enumerate() {
                let kv = DenseKv::new(&model.config, batch, 128);
                let prefill: Vec<SeqChunk<'_>> = (0..batch as u32)
                    .map(|slot| SeqChunk {
                        slot,
                        start_pos: 0,
                        tokens: &prompt,
                        logits: LogitsWanted::None,
                    })
                    .collect();
                model.forward(&prefill, &kv).expect("prefill");
                let steps: Vec<[u32; 1]> = (0..16).map(|s| [300 + s]).collect();
                let mut times = Vec::new();
                for (i, token) in steps.iter().enumerate() {
                    let chunks: Vec<SeqChunk<'_>> = (0..batch as u32)
                        .map(|slot| SeqChunk {
                            slot,
                            start_pos: prompt.len() + i,
                            tokens: token,
                            logits: LogitsWanted::Last,
                        })
                        .collect();
                    let t = Instant::now();
                    model.forward(&chunks, &kv).expect("decode");
                    times.push(t.elapsed().as_secs_f64());
                }
                per[which].push(median(times));
            }
        }
        let (tq, tf) = (median(per[0].clone()), median(per[1].clone()));
        println!(
            "| {batch} | {:.2} | {:.2} | {:.2}× | {:.1} |",
            tq * 1e3,
            tf * 1e3,
            tf / tq,
            batch as f64 / tq
        );
    }
}
