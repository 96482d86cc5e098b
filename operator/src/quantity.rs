//! Kubernetes resource quantities as numbers: parsing (`1Gi`, `500m`, `2e3`) to compare what the
//! API server stores (it rewrites quantities into canonical form: `0.5` comes back as `500m`)
//! with what the operator asked for, and formatting fractional targets canonically.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The value of a quantity string, or `None` if it is not one.
pub fn parse(text: &str) -> Option<f64> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let value: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let power: i32 = exponent
                .strip_prefix('e')
                .or_else(|| exponent.strip_prefix('E'))?
                .parse()
                .ok()?;
            10f64.powi(power)
        }
    };
    Some(value * scale)
}

/// Whether two quantity strings denote the same amount (within a part in 10⁹).
pub fn same(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-9),
        _ => false,
    }
}

/// `value` rounded to thousandths, in the API server's canonical form (`800m`, `1`, `1500m`).
pub fn canonical_milli(value: f64) -> Quantity {
    let milli = (value * 1000.0).round() as i64;
    Quantity(if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes_and_exponents() {
        assert_eq!(parse("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("1.5k"), Some(1500.0));
        assert_eq!(parse("2e3"), Some(2000.0));
        assert_eq!(parse("48Gi"), Some(48.0 * 1024f64.powi(3)));
        assert_eq!(parse("lots"), None);
        assert_eq!(parse("1Xi"), None);
    }

    #[test]
    fn compares_canonical_and_written_forms() {
        assert!(same("0.5", "500m"));
        assert!(same("1024Mi", "1Gi"));
        assert!(same("2000m", "2"));
        assert!(!same("1", "1001m"));
        assert!(!same("1Gi", "1G"));
        assert!(!same("x", "x"));
    }

    #[test]
    fn formats_fractions_canonically() {
        assert_eq!(canonical_milli(0.8).0, "800m");
        assert_eq!(canonical_milli(1.0).0, "1");
        assert_eq!(canonical_milli(4.0).0, "4");
        assert_eq!(canonical_milli(0.8125).0, "813m");
    }
}
