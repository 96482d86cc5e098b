//! Order statistics over samples, with numpy's definitions (vLLM's bench uses `np.percentile`
//! with linear interpolation and `np.std`, the population standard deviation).

use serde::{Deserialize, Serialize};

/// The q-th percentile (0 ≤ q ≤ 100) of `sorted` (ascending), interpolating linearly between
/// the two nearest ranks like `numpy.percentile`. Zero for no samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = q.clamp(0.0, 100.0) / 100.0 * (n - 1) as f64;
            let below = rank.floor() as usize;
            let above = (below + 1).min(n - 1);
            let frac = rank - below as f64;
            sorted[below] + (sorted[above] - sorted[below]) * frac
        }
    }
}

/// Mean, median, standard deviation and tail percentiles of one metric, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Distribution {
    /// From samples in seconds; reported in milliseconds. All zero for no samples.
    pub fn from_seconds(samples: &[f64]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|s| s * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        let n = ms.len() as f64;
        let mean = ms.iter().sum::<f64>() / n;
        let var = ms.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Self {
            mean,
            median: percentile(&ms, 50.0),
            std: var.sqrt(),
            p90: percentile(&ms, 90.0),
            p99: percentile(&ms, 99.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_numpy_linear_interpolation() {
        // numpy.percentile([1, 2, 3, 4], [0, 50, 90, 99, 100]) = [1, 2.5, 3.7, 3.97, 4]
        let v = [1.0, 2.0, 3.0, 4.0];
        for (q, want) in [
            (0.0, 1.0),
            (50.0, 2.5),
            (90.0, 3.7),
            (99.0, 3.97),
            (100.0, 4.0),
        ] {
            assert!((percentile(&v, q) - want).abs() < 1e-12, "q={q}");
        }
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn distribution_is_in_milliseconds_with_population_std() {
        // seconds 0.001..=0.004 -> ms 1..=4: mean 2.5, np.std = sqrt(1.25)
        let d = Distribution::from_seconds(&[0.004, 0.001, 0.003, 0.002]);
        assert!((d.mean - 2.5).abs() < 1e-9);
        assert!((d.median - 2.5).abs() < 1e-9);
        assert!((d.std - 1.25f64.sqrt()).abs() < 1e-9);
        assert!((d.p99 - 3.97).abs() < 1e-9);
        assert_eq!(Distribution::from_seconds(&[]), Distribution::default());
    }
}
