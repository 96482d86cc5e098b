//! Causal attention of a run of query tokens over a sequence's dense, strided K/V — the layout the
//! vAttention region gives every sequence (position `p`, kv head `g` starts at
//! `p * stride + g * head_dim`). Grouped-query attention maps query head `h` to kv head
//! `h / (heads / kv_heads)`.

use std::cell::RefCell;

use rayon::prelude::*;

/// Head counts and width of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Attention for `n` query tokens at positions `start_pos..start_pos + n` of one sequence.
///
/// `q` and `out` are `[n, heads * head_dim]`; `k` and `v` hold positions `0..start_pos + n`
/// (including the keys of the query tokens themselves) with `stride` elements between positions.
/// Query token `t` sees keys `0..=start_pos + t`.
#[allow(clippy::too_many_arguments)]
pub fn attend_causal(
    shape: AttentionShape,
    q: &[f32],
    start_pos: usize,
    k: &[f32],
    v: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    let AttentionShape {
        heads,
        kv_heads,
        head_dim,
    } = shape;
    let group = heads / kv_heads;
    let ctx_total = start_pos + q.len() / (heads * head_dim);
    assert!(
        k.len() >= (ctx_total - 1) * stride + kv_heads * head_dim && v.len() == k.len(),
        "attend_causal: K/V hold fewer positions than the queries need"
    );
    let work = ctx_total * heads * head_dim;
    let task = |(index, out_head): (usize, &mut [f32])| {
        let (token, head) = (index / heads, index % heads);
        let ctx = start_pos + token + 1;
        let q_head = &q[index * head_dim..(index + 1) * head_dim];
        let kv_offset = (head / group) * head_dim;
        SCORES.with_borrow_mut(|scores| {
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for pos in 0..ctx {
                let key = &k[pos * stride + kv_offset..pos * stride + kv_offset + head_dim];
                let s = dot(q_head, key) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut total = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            out_head.fill(0.0);
            for (pos, weight) in scores.iter().enumerate() {
                let value = &v[pos * stride + kv_offset..pos * stride + kv_offset + head_dim];
                let weight = weight / total;
                for (o, x) in out_head.iter_mut().zip(value) {
                    *o += weight * x;
                }
            }
        });
    };
    if work > 32 * 1024 {
        out.par_chunks_mut(head_dim).enumerate().for_each(task);
    } else {
        out.chunks_mut(head_dim).enumerate().for_each(task);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation flags.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a[chunks..]
        .iter()
        .zip(&b[chunks..])
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward reference: materialise scores for one head, softmax, weighted sum.
    fn naive(
        shape: AttentionShape,
        q: &[f32],
        start: usize,
        k: &[f32],
        v: &[f32],
        stride: usize,
    ) -> Vec<f32> {
        let d = shape.head_dim;
        let n = q.len() / (shape.heads * d);
        let mut out = vec![0.0; q.len()];
        for t in 0..n {
            for h in 0..shape.heads {
                let g = h / (shape.heads / shape.kv_heads);
                let qh = &q[(t * shape.heads + h) * d..][..d];
                let scores: Vec<f64> = (0..=start + t)
                    .map(|p| {
                        (0..d)
                            .map(|i| (qh[i] * k[p * stride + g * d + i]) as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for i in 0..d {
                    out[(t * shape.heads + h) * d + i] = (0..=start + t)
                        .map(|p| exps[p] / total * v[p * stride + g * d + i] as f64)
                        .sum::<f64>()
                        as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_for_gqa_chunk_with_padding_stride() {
        let shape = AttentionShape {
            heads: 6,
            kv_heads: 2,
            head_dim: 16,
        };
        let (start, n, stride) = (5, 3, 2 * 16 + 7);
        let ctx = start + n;
        let k: Vec<f32> = (0..ctx * stride)
            .map(|i| (i as f32 * 0.013).sin())
            .collect();
        let v: Vec<f32> = (0..ctx * stride)
            .map(|i| (i as f32 * 0.029).cos())
            .collect();
        let q: Vec<f32> = (0..n * 6 * 16).map(|i| (i as f32 * 0.071).sin()).collect();
        let mut out = vec![f32::NAN; q.len()];
        attend_causal(shape, &q, start, &k, &v, stride, 0.25, &mut out);
        let want = naive(shape, &q, start, &k, &v, stride);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
