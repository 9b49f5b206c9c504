use std::fmt;

use super::ValidationError;

/// A client-chosen identifier: a user id, an order id, a top-up id.
///
/// 1 to 64 characters of `[A-Za-z0-9._:-]`, so it is safe in a Redis key, a log line
/// and a URL path without escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identifier(String);

impl Identifier {
    pub const MAX_LEN: usize = 64;

    /// Validates `value`; `field` names it in the error.
    pub fn parse(field: &str, value: String) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError(format!("{field} must not be empty")));
        }
        if value.len() > Self::MAX_LEN {
            return Err(ValidationError(format!(
                "{field} must be at most {} characters",
                Self::MAX_LEN
            )));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(ValidationError(format!(
                "{field} may only contain letters, digits and . _ : -"
            )));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        assert!(Identifier::parse("id", "Order-1.a_b:c".into()).is_ok());
        assert!(Identifier::parse("id", "x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        for bad in ["", "a b", "a/b", "{u}", "é", "a\n"] {
            assert!(Identifier::parse("id", bad.into()).is_err(), "{bad:?}");
        }
        assert!(Identifier::parse("id", "x".repeat(65)).is_err());
    }
}
