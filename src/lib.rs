//! A wallet service that a checkout calls to pay from a user's stored balance.
//!
//! The path of a debit: [`idempotency`] (Redis Lua claim of the order id), [`lock`]
//! (per-wallet Redis lock with fencing tokens), [`wallet`] (the use case and its single
//! MySQL transaction in [`store`]); [`breaker`] switches to MySQL row locks alone while
//! Redis is unavailable. Side effects leave through the [`outbox`] to Kafka, where
//! [`points`] applies them and [`dead_letters`] keeps what kept failing.
//! [`http`] is the API and [`startup`] wires it all.

pub mod audit;
pub mod breaker;
pub mod configuration;
pub mod dead_letters;
pub mod domain;
pub mod events;
pub mod http;
pub mod idempotency;
pub mod kafka;
pub mod lock;
pub mod outbox;
pub mod payment_requests;
pub mod points;
pub mod redis_support;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod wallet;
