//! Kubernetes resource quantities (`"250m"`, `"12345678n"`, `"1Gi"`,
//! `"1.5e3"`) as numbers, for the values metrics.k8s.io reports.
//!
//! k8s-openapi keeps a `Quantity` as the string the server sent. The
//! grammar (apimachinery's `resource.Quantity`) is small: a signed decimal
//! number, then a binary suffix (`Ki`..`Ei`), a decimal one (`n`, `u`, `m`,
//! none, `k`, `M`..`E`) or a decimal exponent (`e3`, `E-2`). Values are
//! taken as f64: what the autoscaler does with them is a ratio, and f64
//! carries a byte count up to 2^53 exactly.

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a Kubernetes quantity: {why}")]
pub struct QuantityError {
    text: String,
    why: &'static str,
}

fn error(text: &str, why: &'static str) -> QuantityError {
    QuantityError {
        text: text.to_string(),
        why,
    }
}

/// The value of `text`, suffix applied.
pub fn parse(text: &str) -> Result<f64, QuantityError> {
    let text = text.trim();
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_len);
    let value = parse_number(number).ok_or_else(|| error(text, "no valid number"))?;
    let (base, power) = scale_of(suffix).ok_or_else(|| error(text, "unknown suffix"))?;
    // Dividing for negative powers keeps `2000m` exactly 2 (times 10^-3,
    // which f64 cannot hold exactly, it would be a hair above).
    let factor = base.powi(power.unsigned_abs().min(i32::MAX as u32) as i32);
    let result = if power < 0 {
        value / factor
    } else {
        value * factor
    };
    if !result.is_finite() {
        return Err(error(text, "out of range"));
    }
    Ok(result)
}

/// CPU cores: `"250m"` is 0.25, `"12345678n"` 0.012345678.
pub fn cores(text: &str) -> Result<f64, QuantityError> {
    let value = parse(text)?;
    if value < 0.0 {
        return Err(error(text, "negative CPU"));
    }
    Ok(value)
}

/// Bytes: `"12Mi"` is 12 582 912; fractions of a byte round up, as the API
/// server's own rounding does.
pub fn bytes(text: &str) -> Result<u64, QuantityError> {
    let value = parse(text)?;
    if value < 0.0 {
        return Err(error(text, "negative memory"));
    }
    if value > u64::MAX as f64 {
        return Err(error(text, "out of range"));
    }
    // In range and not negative: the cast is exact up to rounding.
    Ok(value.ceil() as u64)
}

/// `[sign] digits [. digits]` (either side of the point may be empty, not
/// both), as the grammar allows; Rust's float parser would also take
/// `inf`, `1e5` and the like, which are not numbers here.
fn parse_number(number: &str) -> Option<f64> {
    let unsigned = number
        .strip_prefix('+')
        .or_else(|| number.strip_prefix('-'))
        .unwrap_or(number);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return None;
    }
    number.parse().ok()
}

/// The factor of a suffix as `(base, power)`, or `None` when it is none of
/// the grammar's.
fn scale_of(suffix: &str) -> Option<(f64, i32)> {
    let binary = |power| Some((1024.0, power));
    let decimal = |power| Some((10.0, power));
    match suffix {
        "" => decimal(0),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => {
            // A decimal exponent: `e` or `E`, then a signed integer.
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let digits = exponent
                .strip_prefix('+')
                .or_else(|| exponent.strip_prefix('-'))
                .unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            decimal(exponent.parse::<i32>().ok()?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn cpu_as_metrics_server_reports_it() {
        for (text, want) in [
            ("250m", 0.25),
            ("12345678n", 0.012_345_678),
            ("1", 1.0),
            ("0", 0.0),
            ("1500u", 0.0015),
            ("2.5", 2.5),
            (".5", 0.5),
            ("1.", 1.0),
            ("+3", 3.0),
            ("1e3", 1000.0),
            ("15E-1", 1.5),
            ("1e+2", 100.0),
            (" 100m ", 0.1),
        ] {
            let got = cores(text).unwrap_or_else(|e| panic!("{e}"));
            assert!(close(got, want), "{text}: {got} != {want}");
        }
    }

    #[test]
    fn memory_in_every_suffix() {
        for (text, want) in [
            ("12Mi", 12 * 1024 * 1024),
            ("1Gi", 1 << 30),
            ("123456Ki", 123_456 * 1024),
            ("4096", 4096),
            ("1.5Gi", 3 << 29),
            ("1k", 1000),
            ("2M", 2_000_000),
            ("3G", 3_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1P", 1_000_000_000_000_000),
            ("1Ei", 1 << 60),
            ("1E", 1_000_000_000_000_000_000),
            // Milli-bytes happen (the API server keeps what it was given).
            ("2000m", 2),
            ("1500m", 2),
            ("0.1", 1),
            (" 1Mi ", 1 << 20),
        ] {
            assert_eq!(bytes(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for text in [
            "",
            " ",
            "m",
            "Mi",
            "abc",
            "1.2.3",
            "1..",
            ".",
            "+",
            "-",
            "--1",
            "1 Mi",
            "1mi",
            "1KI",
            "1Kb",
            "1e",
            "1e+",
            "1e1.5",
            "1ee3",
            "1e99999999999",
            "inf",
            "NaN",
            "1i",
            "0x10",
            "1,5",
            "1_000",
            "١",
            "1Mi\u{0}",
            "1 2",
        ] {
            assert!(parse(text).is_err(), "{text:?} parsed as {:?}", parse(text));
        }
        assert!(bytes("1e400").is_err(), "beyond f64");
        assert!(bytes("100E").is_err(), "beyond u64");
        assert!(cores("-1").is_err());
        assert!(bytes("-1Mi").is_err());
        let error = parse("12Qi").expect_err("unknown suffix");
        assert_eq!(
            error.to_string(),
            "`12Qi` is not a Kubernetes quantity: unknown suffix"
        );
    }
}
