//! Memory waste of the two KV layouts at 2 MiB pages: bytes mapped against bytes of live KV for
//! a realistic mix of sequence lengths, for the SmolLM2-135M, Llama-2-7B and Llama-3-8B shapes.
//! Pure arithmetic on the region's real geometry (the page counts the accounting claims).
//!
//! `cargo bench -p fused-daemon --bench kv_waste` prints the table.

use anyhow::Result;
use fused_daemon::kv::{Geometry, KvConfig, KvLayout};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Shape {
    name: &'static str,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    elem_bytes: usize,
    max_context_len: usize,
}

const SHAPES: [Shape; 4] = [
    Shape {
        name: "SmolLM2-135M (f32, CPU)",
        layers: 30,
        kv_heads: 3,
        head_dim: 64,
        elem_bytes: 4,
        max_context_len: 8192,
    },
    Shape {
        name: "SmolLM2-135M (bf16)",
        layers: 30,
        kv_heads: 3,
        head_dim: 64,
        elem_bytes: 2,
        max_context_len: 8192,
    },
    Shape {
        name: "Llama-2-7B (bf16)",
        layers: 32,
        kv_heads: 32,
        head_dim: 128,
        elem_bytes: 2,
        max_context_len: 4096,
    },
    Shape {
        name: "Llama-3-8B (bf16)",
        layers: 32,
        kv_heads: 8,
        head_dim: 128,
        elem_bytes: 2,
        max_context_len: 8192,
    },
];

const SEQUENCES: usize = 256;
const LOOKAHEAD_TOKENS: usize = 16;

/// A chat-like mix: half short (32–511 tokens), a third medium (512–2047), the rest long
/// (2048 up to the context), seeded so every run sees the same lengths.
fn lengths(max_context_len: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(0x6b76);
    (0..SEQUENCES)
        .map(|_| match rng.random_range(0..100) {
            0..50 => rng.random_range(32..512),
            50..85 => rng.random_range(512..2048),
            _ => rng.random_range(2048..=max_context_len),
        })
        .collect()
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn main() -> Result<()> {
    println!(
        "| model | layout | tokens/page | live KV GiB | mapped GiB | wasted GiB | waste % | waste/seq MiB (mean, max) | + {LOOKAHEAD_TOKENS}-token look-ahead: waste % | eager (full context): mapped GiB, waste % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for shape in &SHAPES {
        let lens = lengths(shape.max_context_len);
        for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
            let mut config = KvConfig::for_model(
                shape.layers,
                shape.kv_heads,
                shape.head_dim,
                shape.elem_bytes,
            );
            config.layout = layout;
            config.max_seqs = SEQUENCES;
            config.max_context_len = shape.max_context_len;
            let geometry = Geometry::new(&config)?;
            let page = geometry.page_bytes;
            let live: usize = lens.iter().map(|&len| len * geometry.token_bytes()).sum();
            let waste_of = |len: usize, mapped_tokens: usize| {
                geometry.pages_for(mapped_tokens) * page - len * geometry.token_bytes()
            };
            let mapped: usize = lens.iter().map(|&len| geometry.pages_for(len) * page).sum();
            let max_waste = lens
                .iter()
                .map(|&len| waste_of(len, len))
                .max()
                .unwrap_or(0);
            let ahead: usize = lens
                .iter()
                .map(|&len| {
                    geometry.pages_for((len + LOOKAHEAD_TOKENS).min(shape.max_context_len)) * page
                })
                .sum();
            let eager = SEQUENCES * geometry.pages_for(shape.max_context_len) * page;
            let percent = |mapped: usize| (mapped - live) as f64 / mapped as f64 * 100.0;
            println!(
                "| {} | {:?} | {} | {:.2} | {:.2} | {:.2} | {:.1} % | {:.1}, {:.1} | {:.1} % | {:.1}, {:.1} % |",
                shape.name,
                layout,
                geometry.tokens_per_page(),
                gib(live),
                gib(mapped),
                gib(mapped - live),
                percent(mapped),
                (mapped - live) as f64 / SEQUENCES as f64 / (1 << 20) as f64,
                max_waste as f64 / (1 << 20) as f64,
                percent(ahead),
                gib(eager),
                percent(eager),
            );
        }
    }
    for context in [4096, 8192] {
        let lens = lengths(context);
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        println!(
            "\n{SEQUENCES} sequences with a {context}-token context: mean {mean:.0} tokens; 2 MiB pages."
        );
    }
    Ok(())
}
