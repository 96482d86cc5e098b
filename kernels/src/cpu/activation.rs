//! Activations: SwiGLU (Llama family) and tanh-approximated GELU (GPT-2's `gelu_new`).

/// SwiGLU over rows laid out `[gate | up]` of width `2 * ffn`: `out = silu(gate) * up`.
pub fn silu_mul(gate_up: &[f32], ffn: usize, out: &mut [f32]) {
    for (row, out_row) in gate_up.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
        let (gate, up) = row.split_at(ffn);
        for ((o, g), u) in out_row.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

/// GELU with the tanh approximation, in place.
pub fn gelu_tanh_inplace(x: &mut [f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    for v in x {
        let inner = SQRT_2_OVER_PI * (*v + 0.044_715 * *v * *v * *v);
        *v = 0.5 * *v * (1.0 + inner.tanh());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_mul_matches_definition() {
        let mut out = [0.0; 2];
        silu_mul(&[0.0, 2.0, 5.0, 3.0], 2, &mut out);
        let silu2 = 2.0 / (1.0 + (-2.0f32).exp());
        assert_eq!(out[0], 0.0);
        assert!((out[1] - silu2 * 3.0).abs() < 1e-6);
    }

    #[test]
    fn gelu_is_near_identity_for_large_inputs() {
        let mut x = [10.0, -10.0, 0.0];
        gelu_tanh_inplace(&mut x);
        assert!((x[0] - 10.0).abs() < 1e-4 && x[1].abs() < 1e-4 && x[2] == 0.0);
    }
}
