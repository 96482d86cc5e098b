//! Host sampling cost per logits row at SmolLM2's vocabulary (49,152) and Llama-2's (32,000):
//! greedy, plain temperature, top-p, top-k and min-p, against the greedy argmax of the same row
//! (the floor: one pass over the row). The engine samples every non-greedy row of every step on
//! its thread, so this is per token per sequence.
//!
//! `cargo bench -p fused-daemon --bench sampling` (≈ 10 s).

mod common;

use common::time;
use fused_daemon::model::sampling::{Sampler, SamplingParams, argmax};

fn main() {
    println!("| vocab | sampling | µs per row | vs argmax |");
    println!("|---:|---|---:|---:|");
    for vocab in [49_152usize, 32_000] {
        // Logits shaped like a model's: a few large, a long tail (deterministic).
        let logits: Vec<f32> = (0..vocab)
            .map(|i| {
                let u = ((i as u64).wrapping_mul(2_654_435_761) % 10_000) as f32 / 10_000.0;
                12.0 * u.powi(8) - 4.0 * u
            })
            .collect();
        // (name, temperature, top-p, top-k, min-p)
        let cases = [
            ("greedy", 0.0, 1.0, 0, 0.0),
            ("temperature 0.8", 0.8, 1.0, 0, 0.0),
            ("temperature 0.8, top-p 0.9", 0.8, 0.9, 0, 0.0),
            ("temperature 0.8, top-k 50", 0.8, 1.0, 50, 0.0),
            ("temperature 0.8, min-p 0.05", 0.8, 1.0, 0, 0.05),
            ("top-p 0.95, top-k 40, min-p 0.02", 1.0, 0.95, 40, 0.02),
        ];
        let reps = 200;
        let mut sink = 0usize;
        let floor = time(reps, || sink ^= argmax(&logits));
        for (name, temperature, top_p, top_k, min_p) in cases {
            let params = SamplingParams {
                temperature,
                top_p,
                top_k,
                min_p,
                seed: Some(1),
                ..SamplingParams::default()
            };
            let mut sampler = Sampler::new(params, &[]);
            let t = time(reps, || sink ^= sampler.sample(&logits).token as usize);
            println!("| {vocab} | {name} | {:.1} | {:.1}× |", t * 1e6, t / floor);
        }
        println!("| {vocab} | argmax alone | {:.1} | 1.0× |", floor * 1e6);
        std::hint::black_box(sink);
    }
}
