//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5G`, `2e3`): parsing
//! and comparison. A quantity is held exactly as a count of nano-units, which
//! covers every suffix from `n` to `Ei` in an `i128`.

use std::cmp::Ordering;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: i128,
}

const NANO: i128 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quantity {:?} must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
            self.0
        )
    }
}

impl std::error::Error for ParseError {}

/// A suffix as (numerator, denominator) in units.
fn suffix_factor(suffix: &str) -> Option<(i128, i128)> {
    Some(match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        _ => return None,
    })
}

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, ParseError> {
        let err = || ParseError(text.to_string());
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(num_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let digits = format!("{int_part}{frac_part}");
        if digits.len() > 30 {
            return Err(err());
        }
        let mantissa: i128 = digits.parse().map_err(|_| err())?;
        let mut exp10: i32 = -(frac_part.len() as i32);
        let (num, den) = match suffix_factor(suffix) {
            Some(f) => f,
            None => {
                let e = suffix.strip_prefix(['e', 'E']).ok_or_else(err)?;
                exp10 += e.parse::<i32>().map_err(|_| err())?;
                (1, 1)
            }
        };
        // nanos = mantissa * 10^exp10 * num / den * 1e9, rounded up.
        let mut numer = mantissa
            .checked_mul(num)
            .ok_or_else(err)?
            .checked_mul(NANO)
            .ok_or_else(err)?;
        let mut denom = den;
        if exp10 >= 0 {
            numer = numer
                .checked_mul(10i128.checked_pow(exp10 as u32).ok_or_else(err)?)
                .ok_or_else(err)?;
        } else {
            denom = denom
                .checked_mul(10i128.checked_pow((-exp10) as u32).ok_or_else(err)?)
                .ok_or_else(err)?;
        }
        let nanos = (numer + denom - 1) / denom;
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    pub fn from_milli(milli: i64) -> Quantity {
        Quantity {
            nanos: i128::from(milli) * 1_000_000,
        }
    }

    /// The value in thousandths, rounded up (CPU is counted this way).
    pub fn milli_value(&self) -> i64 {
        let v = (self.nanos + 999_999).div_euclid(1_000_000);
        v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The value in units, rounded up (memory is counted this way).
    pub fn value(&self) -> i64 {
        let v = (self.nanos + NANO - 1).div_euclid(NANO);
        v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.nanos
            .checked_add(other.nanos)
            .map(|nanos| Quantity { nanos })
    }

    pub fn compare(&self, other: &Quantity) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn suffixes() {
        assert_eq!(q("100m").milli_value(), 100);
        assert_eq!(q("1").milli_value(), 1000);
        assert_eq!(q("0.5").milli_value(), 500);
        assert_eq!(q("64Mi").value(), 64 << 20);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("2e3").value(), 2000);
        assert_eq!(q("1.5Gi").value(), 3 << 29);
        assert_eq!(q("1Ei").value(), 1 << 60);
        assert_eq!(q("-1").value(), -1);
        assert_eq!(q("1n").milli_value(), 1, "rounds up");
    }

    #[test]
    fn comparison() {
        assert!(q("100m") < q("1"));
        assert_eq!(q("1000m"), q("1"));
        assert!(q("1Ki") > q("1k"));
        assert_eq!(q("1024"), q("1Ki"));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "m", "1.2.3", "1Qi", "abc", "1e", "--1", "1 m", "."] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
