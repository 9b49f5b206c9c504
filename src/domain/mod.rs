//! The wallet's vocabulary: identifiers and money, validated once at the edge, and
//! the events it publishes.

pub mod events;
mod identifier;
mod money;

pub use identifier::Identifier;
pub use money::{Amount, Currency, RawAmount};

/// An input that does not satisfy the API's rules; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);
