//! The per-iteration token budget: fixed, or chosen from measured iteration times.
//!
//! Auto mode fits `seconds ≈ fixed + per_prefill · prefill_tokens + per_decode · decode_tokens`
//! by exponentially weighted least squares over the iterations the engine reports, then picks
//! the largest budget whose predicted iteration time, with the decodes now running, plus three
//! standard deviations of the fit's residuals (what the model does not explain: context length,
//! noise), stays under the TBT target. Must not: look at requests or KV; it only turns numbers into a budget.

use super::config::TokenBudget;

/// Weight kept by older samples each time a new one arrives (window of about 100 iterations).
const FORGETTING: f64 = 0.99;
/// Samples needed before the fit is trusted; until then the budget is the minimum.
const MIN_SAMPLES: u64 = 8;
/// Residual standard deviations kept free below the target.
const MARGIN_SIGMAS: f64 = 3.0;

/// Per-iteration cost predicted from measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostEstimate {
    pub fixed_s: f64,
    pub per_prefill_token_s: f64,
    pub per_decode_token_s: f64,
    /// Weighted root-mean-square error of the fit over the samples.
    pub residual_s: f64,
}

impl CostEstimate {
    pub fn predict_s(&self, prefill_tokens: usize, decode_tokens: usize) -> f64 {
        self.fixed_s
            + self.per_prefill_token_s * prefill_tokens as f64
            + self.per_decode_token_s * decode_tokens as f64
    }
}

/// Exponentially weighted least squares over `(1, prefill, decode) → seconds`.
#[derive(Debug, Clone, Default)]
struct CostFit {
    /// Weighted Σ x·xᵀ with x = (1, prefill, decode).
    gram: [[f64; 3]; 3],
    /// Weighted Σ x·seconds.
    moment: [f64; 3],
    /// Weighted Σ seconds².
    square: f64,
    samples: u64,
}

impl CostFit {
    fn observe(&mut self, prefill_tokens: usize, decode_tokens: usize, seconds: f64) {
        let x = [1.0, prefill_tokens as f64, decode_tokens as f64];
        for (row, x_row) in self.gram.iter_mut().zip(x) {
            for (cell, x_col) in row.iter_mut().zip(x) {
                *cell = *cell * FORGETTING + x_row * x_col;
            }
        }
        for (cell, x_row) in self.moment.iter_mut().zip(x) {
            *cell = *cell * FORGETTING + x_row * seconds;
        }
        self.square = self.square * FORGETTING + seconds * seconds;
        self.samples += 1;
    }

    /// The fitted costs, or `None` while too few or too uniform samples make them meaningless
    /// (a prefill token must cost something for the budget to be derived from it).
    fn estimate(&self) -> Option<CostEstimate> {
        if self.samples < MIN_SAMPLES {
            return None;
        }
        let mut gram = self.gram;
        // A relative ridge of 1e-9 keeps a nearly collinear system solvable without moving a
        // well-determined fit; a column that never varied from zero stays singular (no fit).
        for (index, row) in gram.iter_mut().enumerate() {
            row[index] *= 1.0 + 1e-9;
        }
        let theta = solve3(gram, self.moment)?;
        let [fixed_s, per_prefill_token_s, per_decode_token_s] = theta;
        // Σw(t − θ·x)² = Σw t² − 2 θ·Σw x t + θᵀ(Σw x xᵀ)θ.
        let fitted: f64 = (0..3)
            .map(|i| {
                let gram_theta: f64 = (0..3).map(|j| self.gram[i][j] * theta[j]).sum();
                theta[i] * (gram_theta - 2.0 * self.moment[i])
            })
            .sum();
        let weight = self.gram[0][0];
        let residual_s = ((self.square + fitted).max(0.0) / weight).sqrt();
        let estimate = CostEstimate {
            fixed_s,
            per_prefill_token_s,
            per_decode_token_s: per_decode_token_s.max(0.0),
            residual_s,
        };
        (fixed_s.is_finite()
            && residual_s.is_finite()
            && per_prefill_token_s.is_finite()
            && per_prefill_token_s > 0.0)
            .then_some(estimate)
    }
}

/// Solves `a · x = b` by Gaussian elimination with partial pivoting; `None` if singular.
fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let pivot = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        let magnitude = a[pivot][col].abs();
        if magnitude.is_nan() || magnitude <= f64::MIN_POSITIVE {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col];
        for row in col + 1..3 {
            let factor = a[row][col] / pivot_row[col];
            for (cell, pivot_cell) in a[row].iter_mut().zip(pivot_row).skip(col) {
                *cell -= factor * pivot_cell;
            }
            b[row] -= factor * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..3).rev() {
        let tail: f64 = (row + 1..3).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    x.iter().all(|value| value.is_finite()).then_some(x)
}

/// Gives each iteration its token budget.
#[derive(Debug, Clone)]
pub(crate) struct BudgetControl {
    setting: TokenBudget,
    fit: CostFit,
}

impl BudgetControl {
    pub(crate) fn new(setting: TokenBudget) -> Self {
        BudgetControl {
            setting,
            fit: CostFit::default(),
        }
    }

    /// Records one iteration's measured time. Non-finite or negative times are ignored.
    pub(crate) fn observe(&mut self, prefill_tokens: usize, decode_tokens: usize, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            self.fit.observe(prefill_tokens, decode_tokens, seconds);
        }
    }

    pub(crate) fn estimate(&self) -> Option<CostEstimate> {
        self.fit.estimate()
    }

    /// The budget for an iteration that starts with `decodes` running decodes.
    ///
    /// Auto: the largest `B` in `min..=max` with
    /// `fixed + per_decode·decodes + per_prefill·(B − decodes) + 3·residual <= tbt_target`.
    pub(crate) fn budget_for(&self, decodes: usize) -> usize {
        match self.setting {
            TokenBudget::Fixed(tokens) => tokens,
            TokenBudget::Auto {
                tbt_target,
                min,
                max,
            } => {
                let Some(cost) = self.fit.estimate() else {
                    return min;
                };
                let spare_s = tbt_target.as_secs_f64()
                    - cost.predict_s(0, decodes)
                    - MARGIN_SIGMAS * cost.residual_s;
                let prefill_room = (spare_s / cost.per_prefill_token_s).floor();
                if prefill_room.is_nan() || prefill_room < 0.0 {
                    return min;
                }
                // Saturating float → int conversion; the clamp bounds the result anyway.
                let room = prefill_room.min(max as f64) as usize;
                decodes.saturating_add(room).clamp(min, max)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn auto(target_ms: u64, min: usize, max: usize) -> BudgetControl {
        BudgetControl::new(TokenBudget::Auto {
            tbt_target: Duration::from_millis(target_ms),
            min,
            max,
        })
    }

    /// Truth used to generate "measurements": 4 ms + 30 µs per prefill token + 60 µs per decode.
    fn true_cost(prefill: usize, decode: usize) -> f64 {
        0.004 + 30e-6 * prefill as f64 + 60e-6 * decode as f64
    }

    #[test]
    fn fixed_budget_ignores_measurements() {
        let mut control = BudgetControl::new(TokenBudget::Fixed(512));
        control.observe(512, 10, 10.0);
        assert_eq!(control.budget_for(0), 512);
        assert_eq!(control.budget_for(100), 512);
    }

    #[test]
    fn auto_starts_at_min_until_enough_samples() {
        let mut control = auto(50, 128, 4096);
        assert_eq!(control.budget_for(10), 128);
        for step in 0..MIN_SAMPLES - 1 {
            let prefill = 100 + 50 * step as usize;
            control.observe(prefill, 10, true_cost(prefill, 10));
        }
        assert_eq!(control.budget_for(10), 128);
    }

    #[test]
    fn auto_recovers_the_cost_model_and_picks_the_largest_budget_under_target() {
        let mut control = auto(50, 128, 8192);
        for step in 0..200usize {
            let prefill = (step * 37) % 900;
            let decode = 1 + (step * 13) % 120;
            control.observe(prefill, decode, true_cost(prefill, decode));
        }
        let cost = control
            .estimate()
            .expect("200 varied samples determine the fit");
        assert!((cost.fixed_s - 0.004).abs() < 1e-6, "{cost:?}");
        assert!((cost.per_prefill_token_s - 30e-6).abs() < 1e-9, "{cost:?}");
        assert!((cost.per_decode_token_s - 60e-6).abs() < 1e-9, "{cost:?}");
        for decodes in [0, 32, 128] {
            let budget = control.budget_for(decodes);
            let prefill = budget - decodes;
            assert!(
                true_cost(prefill, decodes) <= 0.050 + 1e-9,
                "budget {budget} too large"
            );
            assert!(
                true_cost(prefill + 2, decodes) > 0.050,
                "budget {budget} too small"
            );
        }
        // (50 − 4) ms / 30 µs = 1533 prefill tokens with no decodes.
        assert_eq!(control.budget_for(0), 1533);
    }

    #[test]
    fn auto_keeps_a_margin_for_what_the_fit_does_not_explain() {
        let mut exact = auto(50, 128, 8192);
        let mut noisy = auto(50, 128, 8192);
        for step in 0..400usize {
            let prefill = (step * 37) % 900;
            let decode = 1 + (step * 13) % 120;
            let noise = if step % 2 == 0 { 0.002 } else { -0.002 };
            exact.observe(prefill, decode, true_cost(prefill, decode));
            noisy.observe(prefill, decode, true_cost(prefill, decode) + noise);
        }
        let residual = noisy.estimate().expect("fit").residual_s;
        assert!((residual - 0.002).abs() < 2e-4, "residual {residual}");
        assert!(exact.estimate().expect("fit").residual_s < 1e-7);
        // 3 × 2 ms of margin at 30 µs per token: about 200 tokens less.
        let lost = exact.budget_for(16) - noisy.budget_for(16);
        assert!((180..=220).contains(&lost), "margin cost {lost} tokens");
    }

    #[test]
    fn auto_respects_its_range() {
        let mut control = auto(5, 256, 1024);
        let mut generous = auto(10_000, 256, 1024);
        for step in 0..50usize {
            let prefill = 64 * (step % 9);
            control.observe(prefill, 8, true_cost(prefill, 8));
            generous.observe(prefill, 8, true_cost(prefill, 8));
        }
        // 5 ms target leaves room for ~30 tokens: clamped up to min.
        assert_eq!(control.budget_for(8), 256);
        assert_eq!(generous.budget_for(8), 1024);
    }

    #[test]
    fn auto_follows_a_slowdown() {
        let mut control = auto(50, 128, 8192);
        for step in 0..100usize {
            let prefill = (step * 53) % 1000;
            control.observe(prefill, 16, true_cost(prefill, 16));
        }
        let before = control.budget_for(16);
        for step in 0..400usize {
            let prefill = (step * 53) % 1000;
            control.observe(prefill, 16, 2.0 * true_cost(prefill, 16));
        }
        let after = control.budget_for(16);
        assert!(
            after < before * 6 / 10,
            "budget {before} → {after} after a 2× slowdown"
        );
    }

    #[test]
    fn garbage_measurements_are_ignored_and_degenerate_fits_give_min() {
        let mut control = auto(50, 128, 4096);
        for _ in 0..100 {
            control.observe(0, 0, f64::NAN);
            control.observe(0, 0, -1.0);
            control.observe(0, 0, f64::INFINITY);
        }
        assert!(control.estimate().is_none());
        // Only decode-only iterations: the prefill cost cannot be known.
        for step in 0..100usize {
            control.observe(0, step % 50, true_cost(0, step % 50));
        }
        assert_eq!(control.budget_for(10), 128);
    }

    #[test]
    fn solve3_rejects_singular_systems() {
        assert_eq!(solve3([[0.0; 3]; 3], [1.0, 2.0, 3.0]), None);
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        assert_eq!(solve3(identity, [1.0, 2.0, 3.0]), Some([1.0, 2.0, 3.0]));
    }
}
