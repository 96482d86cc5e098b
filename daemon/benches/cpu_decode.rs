//! CPU decode from the checkpoint's blocks against the f32 matrices, on the real SmolLM2-135M
//! GGUF (Q4_1 layers, Q8_0 head): (1) each matrix product of a decode step at 1–16 rows, block
//! product vs f32 GEMM (where `PACKED_MAX_ROWS` comes from); (2) whole decode steps of the
//! model at batch 1, 2, 4, 8 with and without the blocks. Rounds alternate between the two so that
//! load on this machine hits both; medians; ratios in the same run.
//!
//! `cargo bench -p fused-daemon --bench cpu_decode` (≈ 1 min; needs `scripts/fetch-model.sh`).

mod common;

use std::time::Instant;

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
    let load = || Model::load_gguf(GgufFile::open(&path).expect("GGUF opens")).expect("loads");
    let packed = load();
    let mut plain = load();
    plain.weights.drop_packed();
    println!(
        "SmolLM2-135M: {} matrices with blocks; threads {}",
        packed.weights.packed_count(),
        rayon::current_num_threads()
    );

    println!("\n| matrix | in→out | rows | blocks µs | f32 GEMM µs | f32 / blocks |");
    println!("|---|---|---:|---:|---:|---:|");
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
                "| {name} | {}→{} | {rows} | {:.1} | {:.1} | {:.2}× |",
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
