//! How the checks compare a result with its reference: the relative L2 error, in f64.

/// ‖got − want‖ / ‖want‖; NaN when the lengths differ or any value of either is not finite, so
/// that a NaN never passes a tolerance.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().chain(want).any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        num += (f64::from(*g) - f64::from(*w)).powi(2);
        den += f64::from(*w).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_is_zero_and_nan_never_passes() {
        assert_eq!(rel_l2(&[1.0, -2.0], &[1.0, -2.0]), 0.0);
        assert!((rel_l2(&[1.0, 0.0], &[0.0, 1.0]) - 2f64.sqrt()).abs() < 1e-12);
        assert!(rel_l2(&[f32::NAN], &[1.0]).is_nan());
        assert!(rel_l2(&[1.0], &[f32::INFINITY]).is_nan());
        assert!(rel_l2(&[1.0], &[1.0, 2.0]).is_nan());
    }
}
