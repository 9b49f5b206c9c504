use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::ValidationError;

/// The currency a deployment books in, with the number of minor digits it allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Currency {
    code: &'static str,
    minor_units: u32,
}

impl Currency {
    pub const KRW: Self = Self {
        code: "KRW",
        minor_units: 0,
    };
    pub const JPY: Self = Self {
        code: "JPY",
        minor_units: 0,
    };
    pub const USD: Self = Self {
        code: "USD",
        minor_units: 2,
    };
    pub const EUR: Self = Self {
        code: "EUR",
        minor_units: 2,
    };

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn minor_units(&self) -> u32 {
        self.minor_units
    }

    /// Renders a stored amount with exactly the currency's digits: `1000`, `10.50`.
    pub fn format(&self, value: Decimal) -> String {
        let mut value = value.round_dp(self.minor_units);
        value.rescale(self.minor_units);
        value.to_string()
    }
}

impl FromStr for Currency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::KRW, Self::JPY, Self::USD, Self::EUR]
            .into_iter()
            .find(|c| c.code == s)
            .ok_or_else(|| format!("unsupported currency {s:?} (KRW, JPY, USD or EUR)"))
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// An amount as the client sent it: a decimal string or a JSON integer, not yet checked
/// against the currency. JSON floats are refused, they cannot carry money exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawAmount(pub Decimal);

impl<'de> Deserialize<'de> for RawAmount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AmountVisitor;

        impl Visitor<'_> for AmountVisitor {
            type Value = RawAmount;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal string such as \"1000\" or an integer")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAmount, E> {
                let well_formed = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
                    && v.bytes().filter(|b| *b == b'.').count() <= 1;
                if !well_formed {
                    return Err(E::custom(format!("{v:?} is not a decimal number")));
                }
                Decimal::from_str_exact(v)
                    .map(RawAmount)
                    .map_err(|_| E::custom(format!("{v:?} is not a decimal number")))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawAmount, E> {
                Ok(RawAmount(Decimal::from(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawAmount, E> {
                Ok(RawAmount(Decimal::from(v)))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawAmount, E> {
                Err(E::custom(
                    "fractional amounts must be sent as a string, e.g. \"10.50\"",
                ))
            }
        }

        deserializer.deserialize_any(AmountVisitor)
    }
}

/// A positive amount that fits the currency: at most its minor digits and at most 10^12.
///
/// Normalised, so `1000`, `"1000"` and `"1000.00"` are the same amount (and the same
/// idempotency fingerprint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Amount(Decimal);

impl Amount {
    /// The largest amount one request may move.
    pub fn max() -> Decimal {
        Decimal::from(1_000_000_000_000_u64)
    }

    pub fn parse(field: &str, raw: RawAmount, currency: Currency) -> Result<Self, ValidationError> {
        let value = raw.0.normalize();
        if value <= Decimal::ZERO {
            return Err(ValidationError(format!("{field} must be greater than 0")));
        }
        if value > Self::max() {
            return Err(ValidationError(format!("{field} must be at most 10^12")));
        }
        if value.scale() > currency.minor_units() {
            return Err(ValidationError(format!(
                "{field} has more fraction digits than {currency} allows ({})",
                currency.minor_units()
            )));
        }
        Ok(Self(value))
    }

    pub fn value(&self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Amount {
    /// The normalised form, used in idempotency fingerprints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Result<RawAmount, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn strings_and_integers_are_the_same_amount() {
        let a = Amount::parse("amount", raw("1000").unwrap(), Currency::KRW).unwrap();
        let b = Amount::parse("amount", raw("\"1000.00\"").unwrap(), Currency::KRW).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "1000");
    }

    #[test]
    fn floats_exponents_and_junk_are_refused() {
        for bad in [
            "10.5",
            "\"1e3\"",
            "\"\"",
            "\" 1\"",
            "\"1.2.3\"",
            "\"+1\"",
            "true",
            "null",
        ] {
            assert!(raw(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_must_fit_the_currency() {
        let parse = |json: &str, c| Amount::parse("amount", raw(json).unwrap(), c);
        assert!(parse("0", Currency::KRW).is_err());
        assert!(parse("-5", Currency::KRW).is_err());
        assert!(parse("\"0.5\"", Currency::KRW).is_err());
        assert!(parse("\"0.5\"", Currency::USD).is_ok());
        assert!(parse("\"0.505\"", Currency::USD).is_err());
        assert!(parse("1000000000000", Currency::KRW).is_ok());
        assert!(parse("1000000000001", Currency::KRW).is_err());
    }

    #[test]
    fn formats_with_the_currency_digits() {
        assert_eq!(Currency::KRW.format(Decimal::new(10000000, 4)), "1000");
        assert_eq!(Currency::USD.format(Decimal::new(105000, 4)), "10.50");
    }
}
