//! Rotary position embeddings in the HF layout (rotate-half: element `i` pairs with `i + d/2`),
//! with Llama-3 frequency scaling. Tables are precomputed once per model.

/// Llama-3 style RoPE frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position: usize,
}

/// Precomputed cos/sin for every position up to `max_positions`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(
        head_dim: usize,
        theta: f32,
        scaling: Option<RopeScaling>,
        max_positions: usize,
    ) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                let freq = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
                scaling.map_or(freq, |s| llama3_scale(freq, s))
            })
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }

    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head of width `2 * half` in `heads` (a row of `n_heads * head_dim`) for `pos`.
    pub fn apply(&self, heads: &mut [f32], pos: usize) {
        let half = self.half;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
        for head in heads.chunks_exact_mut(2 * half) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

fn llama3_scale(freq: f64, s: RopeScaling) -> f64 {
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    let low_freq_wavelen = s.original_max_position as f64 / s.low_freq_factor as f64;
    let high_freq_wavelen = s.original_max_position as f64 / s.high_freq_factor as f64;
    if wavelen < high_freq_wavelen {
        freq
    } else if wavelen > low_freq_wavelen {
        freq / s.factor as f64
    } else {
        let smooth = (s.original_max_position as f64 / wavelen - s.low_freq_factor as f64)
            / (s.high_freq_factor as f64 - s.low_freq_factor as f64);
        (1.0 - smooth) * freq / s.factor as f64 + smooth * freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_rotation_keeps_norm() {
        let table = RopeTable::new(8, 10_000.0, None, 16);
        let orig: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
        let mut x = orig.clone();
        table.apply(&mut x, 0);
        assert_eq!(x, orig);
        table.apply(&mut x, 9);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x) - norm(&orig)).abs() < 1e-3);
        assert_ne!(x, orig);
    }

    #[test]
    fn llama3_scaling_divides_low_frequencies_only() {
        let s = RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        };
        assert_eq!(llama3_scale(1.0, s), 1.0);
        assert!((llama3_scale(1e-5, s) - 1e-5 / 8.0).abs() < 1e-12);
    }
}
