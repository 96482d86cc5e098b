//! Host sampling cost per logits row at SmolLM2's vocabulary (49,152) and Llama-2's (32,000):
//! greedy, plain temperature, top-p, top-k and min-p, against the greedy argmax of the same row
//! (the floor: one pass over the row). The engine samples every non-greedy row of every step on
//! its thread, so this is per token per sequence.
//!
//! `cargo bench -p fused-daemon --bench sampling` (≈ 10 s).

use std::time::Instant;

use fused_daemon::model::sampling::{Sampler, SamplingParams, argmax};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

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
        let seeded = |f: fn(&mut SamplingParams)| {
            let mut p = SamplingParams {
                seed: Some(1),
                ..SamplingParams::default()
            };
            f(&mut p);
            p
        };
        let cases: [(&str, SamplingParams); 6] = [
            ("greedy", SamplingParams::greedy()),
            ("temperature 0.8", seeded(|p| p.temperature = 0.8)),
            (
                "temperature 0.8, top-p 0.9",
                seeded(|p| {
                    p.temperature = 0.8;
                    p.top_p = 0.9;
                }),
            ),
            (
                "temperature 0.8, top-k 50",
                seeded(|p| {
                    p.temperature = 0.8;
                    p.top_k = 50;
                }),
            ),
            (
                "temperature 0.8, min-p 0.05",
                seeded(|p| {
                    p.temperature = 0.8;
                    p.min_p = 0.05;
                }),
            ),
            (
                "top-p 0.95, top-k 40, min-p 0.02",
                seeded(|p| {
                    p.top_p = 0.95;
                    p.top_k = 40;
                    p.min_p = 0.02;
                }),
            ),
        ];
        let reps = 200;
        let time = |f: &mut dyn FnMut()| {
            median(
                (0..reps)
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .collect(),
            )
        };
        let mut sink = 0usize;
        let floor = time(&mut || sink ^= argmax(&logits));
        for (name, params) in cases {
            let mut sampler = Sampler::new(params, &[]);
            let t = time(&mut || sink ^= sampler.sample(&logits).token as usize);
            println!("| {vocab} | {name} | {:.1} | {:.1}× |", t * 1e6, t / floor);
        }
        println!("| {vocab} | argmax alone | {:.1} | 1.0× |", floor * 1e6);
        std::hint::black_box(sink);
    }
}
