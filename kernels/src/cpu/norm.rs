//! Normalisations: RMSNorm (Llama family) and LayerNorm (GPT-2), row by row.

/// `out[r] = x[r] / rms(x[r]) * weight` for each row of width `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    debug_assert_eq!(x.len(), out.len());
    for (row, out_row) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inv = 1.0 / (mean_square + eps).sqrt();
        for ((o, v), w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// `out[r] = (x[r] - mean) / std * weight + bias` for each row of width `weight.len()`.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    debug_assert_eq!(x.len(), out.len());
    for (row, out_row) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = row.iter().sum::<f32>() / width as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, v), w), b) in out_row.iter_mut().zip(row).zip(weight).zip(bias) {
            *o = (v - mean) * inv * w + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_constant_row_is_weight() {
        let mut out = [0.0; 4];
        rms_norm(&[3.0; 4], &[1.0, 2.0, 3.0, 4.0], 0.0, &mut out);
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut out = [0.0; 2];
        layer_norm(&[1.0, 3.0], &[1.0, 1.0], &[0.5, 0.5], 0.0, &mut out);
        assert!(
            (out[0] + 0.5).abs() < 1e-6 && (out[1] - 1.5).abs() < 1e-6,
            "{out:?}"
        );
    }
}
