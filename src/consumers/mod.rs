//! The Kafka consumers, side by side, and the loop they share ([`consume`]): handle a
//! record (or what is already waiting, as one batch), retry transient failures with
//! backoff, send what keeps failing to the dead-letter topic ([`crate::dead_letters`]), commit.
//!
//! - [`points`]: credits points for completed payments, takes them back for cancelled
//!   ones, exactly once in effect;
//! - [`payment_requests`]: payments requested by event, through the same debit use case
//!   as the API;
//! - [`dead_letters`]: stores what lands on the dead-letter topics in `failed_events`,
//!   where operators list, retry or discard it.

mod consume;
pub mod dead_letters;
pub mod payment_requests;
pub mod points;

pub use consume::{consume, decode_json, HandlerError, RecordHandler, RetryPolicy};
