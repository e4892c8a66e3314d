//! Money as integer fen, parsed exactly from decimal strings (never via `f64`).

use std::fmt;

/// A non-negative amount of money in fen (1/100 yuan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct AmountFen(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount is not a plain decimal number")]
    NotDecimal,
    #[error("amount has more than two decimal places")]
    TooPrecise,
    #[error("amount is negative")]
    Negative,
    #[error("amount is too large")]
    Overflow,
}

impl AmountFen {
    /// The largest amount accepted: 10^15 fen, far above any real payment and
    /// far below `i64::MAX`, so sums of a few amounts never overflow.
    pub const MAX_FEN: i64 = 1_000_000_000_000_000;

    pub const ZERO: AmountFen = AmountFen(0);

    /// Parses a yuan amount written as a decimal string: `"100.01"` -> 10001,
    /// `"0.1"` -> 10, `"5"` -> 500. At most two decimals; no sign, exponent or
    /// spaces.
    pub fn parse_yuan(text: &str) -> Result<Self, AmountError> {
        if text.is_empty() {
            return Err(AmountError::Empty);
        }
        if text.starts_with('-') {
            return Err(AmountError::Negative);
        }
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotDecimal);
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || (text.contains('.') && frac.is_empty()) {
            return Err(AmountError::NotDecimal);
        }
        if frac.len() > 2 {
            return Err(AmountError::TooPrecise);
        }
        let mut fen: i64 = 0;
        for b in whole.bytes() {
            fen = fen
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(b - b'0')))
                .ok_or(AmountError::Overflow)?;
        }
        let mut frac_digits = frac.bytes().map(|b| i64::from(b - b'0'));
        let tenths = frac_digits.next().unwrap_or(0);
        let hundredths = frac_digits.next().unwrap_or(0);
        fen = fen
            .checked_mul(100)
            .and_then(|v| v.checked_add(tenths * 10 + hundredths))
            .ok_or(AmountError::Overflow)?;
        Self::from_fen(fen)
    }

    /// Parses a fen amount written as a string of digits: `"1000"` -> 1000.
    pub fn parse_fen(text: &str) -> Result<Self, AmountError> {
        if text.is_empty() {
            return Err(AmountError::Empty);
        }
        if text.starts_with('-') {
            return Err(AmountError::Negative);
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotDecimal);
        }
        let fen: i64 = text.parse().map_err(|_| AmountError::Overflow)?;
        Self::from_fen(fen)
    }

    /// Takes a fen amount from a JSON value: an integer, or a string of digits.
    /// Fractions, negatives and anything else are refused.
    pub fn from_json_fen(value: &serde_json::Value) -> Result<Self, AmountError> {
        match value {
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(v) => Self::from_fen(v),
                None if n.as_u64().is_some() => Err(AmountError::Overflow),
                None => Err(AmountError::NotDecimal),
            },
            serde_json::Value::String(s) => Self::parse_fen(s),
            _ => Err(AmountError::NotDecimal),
        }
    }

    pub fn from_fen(fen: i64) -> Result<Self, AmountError> {
        if fen < 0 {
            Err(AmountError::Negative)
        } else if fen > Self::MAX_FEN {
            Err(AmountError::Overflow)
        } else {
            Ok(Self(fen))
        }
    }

    pub fn fen(self) -> i64 {
        self.0
    }

    /// `self - other`, refused when it would be negative.
    pub fn checked_sub(self, other: AmountFen) -> Option<AmountFen> {
        self.0.checked_sub(other.0).and_then(|v| Self::from_fen(v).ok())
    }

    /// The amount written as yuan with exactly two decimals: 10001 -> "100.01".
    pub fn to_yuan_string(self) -> String {
        format!("{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl fmt::Display for AmountFen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_strings_parse_exactly() {
        assert_eq!(AmountFen::parse_yuan("100.01").map(AmountFen::fen), Ok(10001));
        assert_eq!(AmountFen::parse_yuan("0.1").map(AmountFen::fen), Ok(10));
        assert_eq!(AmountFen::parse_yuan("0.10").map(AmountFen::fen), Ok(10));
        assert_eq!(AmountFen::parse_yuan("5").map(AmountFen::fen), Ok(500));
        assert_eq!(AmountFen::parse_yuan("0.01").map(AmountFen::fen), Ok(1));
        assert_eq!(
            AmountFen::parse_yuan("99999999.99").map(AmountFen::fen),
            Ok(9_999_999_999)
        );
    }

    #[test]
    fn bad_yuan_strings_are_refused() {
        assert_eq!(AmountFen::parse_yuan("10.001"), Err(AmountError::TooPrecise));
        assert_eq!(AmountFen::parse_yuan("-1"), Err(AmountError::Negative));
        for bad in ["", "1.", ".5", "1e3", " 1", "1,00", "abc", "+1", "1.2.3", "١"] {
            assert!(AmountFen::parse_yuan(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            AmountFen::parse_yuan("99999999999999999999"),
            Err(AmountError::Overflow)
        );
    }

    #[test]
    fn fen_from_json() {
        use serde_json::json;
        assert_eq!(AmountFen::from_json_fen(&json!(100)).map(AmountFen::fen), Ok(100));
        assert_eq!(
            AmountFen::from_json_fen(&json!("700")).map(AmountFen::fen),
            Ok(700)
        );
        assert!(AmountFen::from_json_fen(&json!(1.5)).is_err());
        assert!(AmountFen::from_json_fen(&json!(-1)).is_err());
        assert!(AmountFen::from_json_fen(&json!(u64::MAX)).is_err());
        assert!(AmountFen::from_json_fen(&json!(null)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn yuan_round_trips(fen in 1i64..=9_999_999_999) {
            let amount = AmountFen::from_fen(fen).unwrap();
            proptest::prop_assert_eq!(AmountFen::parse_yuan(&amount.to_yuan_string()), Ok(amount));
        }

        #[test]
        fn parse_never_panics(text in ".{0,40}") {
            let _ = AmountFen::parse_yuan(&text);
            let _ = AmountFen::parse_fen(&text);
        }
    }
}
