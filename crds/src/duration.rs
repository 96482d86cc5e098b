//! Durations as the FusedModel spells them (`30s`, `5m`, `1h30m`: Go's `time.ParseDuration`
//! units from seconds up, as Knative and KEDA users write them). The schema checks the
//! spelling with [`DURATION_PATTERN`]; [`seconds`] reads it.

/// Schema pattern of a duration: one or more `<digits><unit>` with unit `s`, `m` or `h`.
pub const DURATION_PATTERN: &str = "^([0-9]+(s|m|h))+$";

/// The duration `text` in seconds, or `None` when it does not match [`DURATION_PATTERN`] or
/// overflows.
pub fn seconds(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.chars() {
        if let Some(digit) = c.to_digit(10) {
            number = Some(
                number
                    .unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(digit))?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        total = total.checked_add(number.take()?.checked_mul(unit)?)?;
    }
    // A trailing number without a unit is not a duration.
    number.is_none().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_style_durations() {
        assert_eq!(seconds("30s"), Some(30));
        assert_eq!(seconds("5m"), Some(300));
        assert_eq!(seconds("1h30m"), Some(5400));
        assert_eq!(seconds("0s"), Some(0));
        assert_eq!(seconds("90m15s"), Some(5415));
    }

    #[test]
    fn refuses_what_the_pattern_refuses() {
        for bad in ["", "30", "s", "5 m", "1d", "-5s", "1.5m", "m5"] {
            assert_eq!(seconds(bad), None, "{bad:?}");
        }
        assert_eq!(seconds("99999999999999999999h"), None, "overflow");
    }
}
