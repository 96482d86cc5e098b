//! Dense layers: `y = x · Wᵀ (+ b)` with `W` stored `[out, in]` row-major, as checkpoints hold it.

use gemm::Parallelism;

/// `y[rows, out] = x[rows, in] · w[out, in]ᵀ + bias`.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, rows: usize, out: usize, y: &mut [f32]) {
    let inner = w.len() / out;
    assert_eq!(x.len(), rows * inner, "linear: input is not rows × in");
    assert_eq!(y.len(), rows * out, "linear: output is not rows × out");
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && rows * out * inner > 64 * 1024 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above bound every index gemm touches: dst is rows × out (row stride
    // `out`), lhs rows × inner (row stride `inner`), rhs inner × out read as wᵀ (column stride
    // `inner`).
    unsafe {
        gemm::gemm(
            rows,
            out,
            inner,
            y.as_mut_ptr(),
            1,
            out as isize,
            false,
            x.as_ptr(),
            1,
            inner as isize,
            w.as_ptr(),
            inner as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    if let Some(bias) = bias {
        add_bias(y, bias);
    }
}

/// `y[r, :] += bias` for every row of `y` (rows of `bias.len()` values).
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive_product() {
        let (rows, inner, out) = (3, 5, 4);
        let x: Vec<f32> = (0..rows * inner).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..out * inner).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..out).map(|i| i as f32).collect();
        let mut y = vec![0.0; rows * out];
        linear(&x, &w, Some(&b), rows, out, &mut y);
        for r in 0..rows {
            for o in 0..out {
                let want: f32 = (0..inner)
                    .map(|i| x[r * inner + i] * w[o * inner + i])
                    .sum::<f32>()
                    + b[o];
                assert!((y[r * out + o] - want).abs() < 1e-5);
            }
        }
    }
}
