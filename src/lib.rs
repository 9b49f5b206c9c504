//! A wallet service that a checkout calls to pay from a user's stored balance.
//!
//! The path of a debit: [`idempotency`] (Redis Lua claim of the order id), [`lock`]
//! (per-wallet Redis lock with fencing tokens), [`wallet`] (the use case and its single
//! MySQL transaction in [`store`]); [`breaker`] switches to MySQL row locks alone while
//! Redis is unavailable. [`http`] is the API and [`startup`] wires it all.

pub mod breaker;
pub mod configuration;
pub mod domain;
pub mod http;
pub mod idempotency;
pub mod lock;
pub mod redis_support;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod wallet;
