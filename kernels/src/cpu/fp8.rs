//! E4M3 (FP8) values on the host: decoding a code and rounding to the nearest code, as the
//! device's quantizer does — what FP8 checkpoints are read with and what checks compare against.

/// Largest finite E4M3 value: a row's largest magnitude is scaled onto it.
pub const E4M3_MAX: f32 = 448.0;

/// One E4M3 code as a float (sign, 4 exponent bits of bias 7, 3 mantissa bits; `0x7f` and
/// `0xff` are NaN; no infinities).
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((code >> 3) & 0x0f);
    let mantissa = f32::from(code & 0x07);
    if code & 0x7f == 0x7f {
        return f32::NAN;
    }
    let magnitude = if exponent == 0 {
        mantissa / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    };
    sign * magnitude
}

/// `x` rounded to the nearest E4M3 value (ties to the even code), saturated to ±[`E4M3_MAX`]:
/// what `quantize_fp8_rows` stores for `x` = weight / scale, decoded.
pub fn round_to_e4m3(x: f32) -> f32 {
    let magnitude = x.abs().min(E4M3_MAX);
    // Codes 0..=0x7e are the finite non-negative values, in increasing order.
    let above = (0u8..=0x7e)
        .find(|&c| e4m3_to_f32(c) >= magnitude)
        .unwrap_or(0x7e);
    let code = if above == 0 {
        0
    } else {
        let (lo, hi) = (e4m3_to_f32(above - 1), e4m3_to_f32(above));
        match (magnitude - lo).total_cmp(&(hi - magnitude)) {
            std::cmp::Ordering::Less => above - 1,
            std::cmp::Ordering::Greater => above,
            std::cmp::Ordering::Equal if above % 2 == 0 => above,
            std::cmp::Ordering::Equal => above - 1,
        }
    };
    e4m3_to_f32(code).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_e4m3_picks_the_nearest_value_and_ties_to_even() {
        assert_eq!(round_to_e4m3(1.0), 1.0);
        assert_eq!(round_to_e4m3(1.06), 1.0);
        assert_eq!(round_to_e4m3(1.07), 1.125);
        // Halfway between 1.0 (code 0x38, even) and 1.125 (0x39): the even code.
        assert_eq!(round_to_e4m3(1.0625), 1.0);
        // Halfway between 1.125 (0x39) and 1.25 (0x3a, even).
        assert_eq!(round_to_e4m3(1.1875), 1.25);
        assert_eq!(round_to_e4m3(-3.0e3), -E4M3_MAX);
        assert_eq!(round_to_e4m3(1e-4), 0.0);
        assert_eq!(round_to_e4m3(-0.5), -0.5);
    }

    #[test]
    fn e4m3_codes_decode_to_the_format_values() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
        assert_eq!(e4m3_to_f32(0x7e), E4M3_MAX);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        // Monotone over the positive codes.
        let values: Vec<f32> = (0..0x7f).map(e4m3_to_f32).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]));
    }
}
