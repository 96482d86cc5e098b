//! One batched forward pass over a flat token list from several sequences at different positions
//! (varlen: some sequences in a prefill chunk, others decoding one token). K/V are written to and
//! read from the KV region through [`KvAccess`]; every sequence's K/V is dense and contiguous.

use fused_kernels::cpu::{self, AttentionShape};
use rayon::prelude::*;

use super::Model;
use super::ModelError;
use super::weights::{Block, Linear, Mlp, Norm};
use crate::kv::{KvAccess, LayerKv, SlotId};

/// Which logits a sequence of the batch wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// A prefill chunk that is not the last: nothing to sample.
    None,
    /// The next-token distribution after the chunk's last token.
    Last,
    /// One row per token of the chunk (scoring text, perplexity).
    All,
    /// Only the greedy choice after the chunk's last token (the first index of its largest
    /// logit). A model may pick it on the device and return the token in [`Logits::picked`]
    /// instead of the row; the CPU model returns the row, as for `Last`.
    Greedy,
}

impl LogitsWanted {
    /// The rows of a chunk of `n` tokens whose logits the head computes.
    pub fn rows(self, n: usize) -> std::ops::Range<usize> {
        match self {
            Self::None => 0..0,
            Self::Last | Self::Greedy => n - 1..n,
            Self::All => 0..n,
        }
    }
}

/// One sequence's share of a batch: `tokens` at positions `start_pos..start_pos + tokens.len()`.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    pub slot: SlotId,
    pub start_pos: usize,
    pub tokens: &'a [u32],
    pub logits: LogitsWanted,
}

/// Logits rows, in batch order: for each chunk, none, one (`Last`) or `tokens.len()` (`All`).
#[derive(Debug, Clone)]
pub struct Logits {
    pub vocab: usize,
    pub data: Vec<f32>,
    /// `(first row, rows)` for each chunk of the batch.
    pub spans: Vec<(usize, usize)>,
    /// Per chunk, the token a model picked itself for a [`LogitsWanted::Greedy`] chunk (its
    /// span is then empty); empty when the model picked none.
    pub picked: Vec<Option<u32>>,
}

impl Logits {
    /// The rows of chunk `i`.
    pub fn rows(&self, i: usize) -> impl Iterator<Item = &[f32]> {
        let (first, count) = self.spans[i];
        self.data[first * self.vocab..(first + count) * self.vocab].chunks_exact(self.vocab)
    }

    /// The token the model picked for chunk `i`, if it did.
    pub fn picked(&self, i: usize) -> Option<u32> {
        self.picked.get(i).copied().flatten()
    }
}

impl Model {
    /// Runs `chunks` through the model. The engine guarantees each chunk's slot is distinct and
    /// that the KV memory of positions `0..start_pos + tokens.len()` is ready.
    pub fn forward(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &dyn KvAccess,
    ) -> Result<Logits, ModelError> {
        let cfg = &self.config;
        let total: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        check_chunks(chunks, cfg.vocab_size, self.max_positions())?;
        let h = cfg.hidden;
        let mut x = self.embed(chunks, total);
        let mut normed = vec![0.0; total * h];
        for (layer, block) in self.weights.blocks.iter().enumerate() {
            norm(&block.attn_norm, &x, &mut normed);
            let attn = self.attention(layer, block, chunks, &normed, kv, total);
            self.add_linear(&block.o, &attn, total, &mut x)?;
            norm(&block.mlp_norm, &x, &mut normed);
            let hidden = mlp(&block.mlp, &normed, total);
            let down = match &block.mlp {
                Mlp::SwiGlu { down, .. } => down,
                Mlp::Gelu { proj, .. } => proj,
            };
            self.add_linear(down, &hidden, total, &mut x)?;
        }
        Ok(self.head(chunks, &x))
    }

    /// `x += input · Wᵀ + b`, the product summed over the tensor-parallel group first (a rank
    /// holds a slice of `W`'s columns and `input`'s matching part).
    fn add_linear(
        &self,
        layer: &Linear,
        input: &[f32],
        rows: usize,
        x: &mut [f32],
    ) -> Result<(), ModelError> {
        let mut y = vec![0.0; rows * layer.out];
        project(layer, input, rows, &mut y);
        if let Some(group) = &self.group {
            group.all_reduce_sum(&mut y)?;
        }
        for (a, b) in x.iter_mut().zip(&y) {
            *a += b;
        }
        Ok(())
    }

    fn max_positions(&self) -> usize {
        self.rope
            .as_ref()
            .map_or(self.config.max_positions, |r| r.max_positions())
    }

    fn embed(&self, chunks: &[SeqChunk<'_>], total: usize) -> Vec<f32> {
        let h = self.config.hidden;
        let mut x = Vec::with_capacity(total * h);
        for c in chunks {
            for (i, &t) in c.tokens.iter().enumerate() {
                let t = t as usize;
                x.extend_from_slice(&self.weights.embed[t * h..(t + 1) * h]);
                if let Some(pos_table) = &self.weights.positions {
                    let p = c.start_pos + i;
                    let row = x.len() - h;
                    for (v, p) in x[row..].iter_mut().zip(&pos_table[p * h..(p + 1) * h]) {
                        *v += p;
                    }
                }
            }
        }
        x
    }

    /// QKV projection, RoPE, K/V written to the region, causal attention per sequence.
    fn attention(
        &self,
        layer: usize,
        block: &Block,
        chunks: &[SeqChunk<'_>],
        normed: &[f32],
        kv: &dyn KvAccess,
        total: usize,
    ) -> Vec<f32> {
        let cfg = &self.config;
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
        let width = q_dim + 2 * kv_dim;
        let mut qkv = vec![0.0; total * width];
        project(&block.qkv, normed, total, &mut qkv);
        let mut q = vec![0.0; total * q_dim];
        let mut out = vec![0.0; total * q_dim];
        let shape = AttentionShape {
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
        };
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        // Split the flat buffers into per-chunk pieces so sequences run in parallel.
        let mut pieces = Vec::with_capacity(chunks.len());
        let (mut qkv_rest, mut q_rest, mut out_rest) = (&mut qkv[..], &mut q[..], &mut out[..]);
        for c in chunks {
            let n = c.tokens.len();
            let (a, b) = std::mem::take(&mut qkv_rest).split_at_mut(n * width);
            let (qa, qb) = std::mem::take(&mut q_rest).split_at_mut(n * q_dim);
            let (oa, ob) = std::mem::take(&mut out_rest).split_at_mut(n * q_dim);
            pieces.push((c, a, qa, oa));
            (qkv_rest, q_rest, out_rest) = (b, qb, ob);
        }
        pieces.into_par_iter().for_each(|(c, qkv, q, out)| {
            let lkv = kv.layer_kv(c.slot, layer);
            for (i, row) in qkv.chunks_exact_mut(width).enumerate() {
                let pos = c.start_pos + i;
                let (q_part, kv_part) = row.split_at_mut(q_dim);
                let (k_part, v_part) = kv_part.split_at_mut(kv_dim);
                if let Some(rope) = &self.rope {
                    rope.apply(q_part, pos);
                    rope.apply(k_part, pos);
                }
                q[i * q_dim..(i + 1) * q_dim].copy_from_slice(q_part);
                // SAFETY: the engine made positions below start_pos + n ready for this slot, and
                // no other chunk of the batch uses the slot.
                unsafe { write_kv(lkv, pos, k_part, v_part) };
            }
            let ctx = c.start_pos + c.tokens.len();
            // SAFETY: positions 0..ctx of this slot are ready (the engine waited for start_pos +
            // n before the pass) and written (earlier chunks, and this chunk just above); this
            // chunk's slot is its own, so nothing writes them while the slices live.
            let (k, v) = unsafe { read_kv(lkv, ctx, kv_dim) };
            cpu::attend_causal(
                shape,
                q,
                c.start_pos,
                k,
                v,
                lkv.token_stride / 4,
                scale,
                out,
            );
        });
        out
    }

    /// Final norm and LM head over the rows the chunks asked for.
    fn head(&self, chunks: &[SeqChunk<'_>], x: &[f32]) -> Logits {
        let (h, vocab) = (self.config.hidden, self.output_ids);
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(chunks.len());
        let mut offset = 0;
        for c in chunks {
            let n = c.tokens.len();
            let first = rows.len() / h;
            for i in c.logits.rows(n) {
                rows.extend_from_slice(&x[(offset + i) * h..(offset + i + 1) * h]);
            }
            spans.push((first, rows.len() / h - first));
            offset += n;
        }
        let count = rows.len() / h;
        let mut normed = vec![0.0; rows.len()];
        norm(&self.weights.final_norm, &rows, &mut normed);
        let mut data = vec![0.0; count * vocab];
        match self.weights.lm_head_packed() {
            Some(packed) if count <= PACKED_MAX_ROWS => {
                packed.matmul_first(&normed, count, vocab, &mut data)
            }
            _ if count > 0 => cpu::linear(
                &normed,
                &self.weights.lm_head()[..vocab * h],
                None,
                count,
                vocab,
                &mut data,
            ),
            _ => {}
        }
        Logits {
            vocab,
            data,
            spans,
            picked: Vec::new(),
        }
    }
}

/// Refuses token ids outside the vocabulary and positions past the model's last one (shared by
/// the CPU and GPU forward passes).
pub(crate) fn check_chunks(
    chunks: &[SeqChunk<'_>],
    vocab_size: usize,
    max_positions: usize,
) -> Result<(), ModelError> {
    for c in chunks {
        if let Some(&bad) = c.tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab_size}"
            )));
        }
        if c.start_pos + c.tokens.len() > max_positions {
            return Err(ModelError::Input(format!(
                "positions up to {} exceed the model's {max_positions} positions",
                c.start_pos + c.tokens.len(),
            )));
        }
    }
    Ok(())
}

fn norm(n: &Norm, x: &[f32], out: &mut [f32]) {
    match n {
        Norm::Rms { weight, eps } => cpu::rms_norm(x, weight, *eps, out),
        Norm::Layer { weight, bias, eps } => cpu::layer_norm(x, weight, bias, *eps, out),
    }
}

/// Rows up to which a layer with the checkpoint's blocks multiplies them directly: decode
/// reads 4.5–8.5 bits per weight instead of 32; from here on the f32 GEMM's blocking wins
/// (`cargo bench -p fused-daemon --bench cpu_decode`). Also at one row, where a micro-benchmark
/// of one cache-hot matrix favours the f32 GEMV for SmolLM2's small layers: inside a whole
/// decode step nothing stays in cache, and routing them to f32 made the step 1.8× slower.
const PACKED_MAX_ROWS: usize = 8;

/// `y = input · Wᵀ + b` (`y` is `[rows, out]`).
fn project(layer: &Linear, input: &[f32], rows: usize, y: &mut [f32]) {
    match &layer.packed {
        Some(packed) if rows <= PACKED_MAX_ROWS => {
            packed.matmul(input, rows, y);
            if let Some(bias) = &layer.bias {
                cpu::add_bias(y, bias);
            }
        }
        _ => cpu::linear(
            input,
            &layer.weight,
            layer.bias.as_deref(),
            rows,
            layer.out,
            y,
        ),
    }
}

/// The MLP up to (not including) its output projection.
fn mlp(m: &Mlp, normed: &[f32], rows: usize) -> Vec<f32> {
    match m {
        Mlp::SwiGlu { gate_up, .. } => {
            let ffn = gate_up.out / 2;
            let mut gu = vec![0.0; rows * gate_up.out];
            project(gate_up, normed, rows, &mut gu);
            let mut act = vec![0.0; rows * ffn];
            cpu::silu_mul(&gu, ffn, &mut act);
            act
        }
        Mlp::Gelu { fc, .. } => {
            let mut hidden = vec![0.0; rows * fc.out];
            project(fc, normed, rows, &mut hidden);
            cpu::gelu_tanh_inplace(&mut hidden);
            hidden
        }
    }
}

/// Writes one position's K and V rows (f32).
///
/// # Safety
/// `pos` must be a ready position of `lkv`'s slot that no other thread touches.
unsafe fn write_kv(lkv: LayerKv, pos: usize, k: &[f32], v: &[f32]) {
    // SAFETY: the caller guarantees `pos` is ready (mapped) and touched by no other thread; a
    // position's K row and V row each start at `pos * token_stride` bytes from their bases,
    // which the KV geometry keeps 4-byte aligned with room for `kv_heads * head_dim` f32,
    // and `k`/`v` are one such row each.
    unsafe {
        std::ptr::copy_nonoverlapping(
            k.as_ptr(),
            lkv.k.add(pos * lkv.token_stride).cast::<f32>(),
            k.len(),
        );
        std::ptr::copy_nonoverlapping(
            v.as_ptr(),
            lkv.v.add(pos * lkv.token_stride).cast::<f32>(),
            v.len(),
        );
    }
}

/// Views positions `0..ctx` of a slot's K and V as strided `f32` slices.
///
/// # Safety
/// Positions `0..ctx` must be ready and not written concurrently.
unsafe fn read_kv<'a>(lkv: LayerKv, ctx: usize, kv_dim: usize) -> (&'a [f32], &'a [f32]) {
    let len = (ctx - 1) * (lkv.token_stride / 4) + kv_dim;
    // SAFETY: the caller guarantees positions 0..ctx are ready and not written meanwhile; the
    // span starts at position 0 and ends with the last position's `kv_dim` values, inside the
    // mapped rows; f32 at 4-byte aligned addresses (the KV geometry's stride).
    unsafe {
        (
            std::slice::from_raw_parts(lkv.k.cast::<f32>(), len),
            std::slice::from_raw_parts(lkv.v.cast::<f32>(), len),
        )
    }
}
