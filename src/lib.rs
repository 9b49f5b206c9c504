//! A wallet service that a checkout calls to pay from a user's stored balance.
//!
//! The path of a debit: [`idempotency`] (Redis Lua claim of the order id), [`lock`]
//! (per-wallet Redis lock with fencing tokens), [`wallet`] (the use cases, group-committed
//! in one MySQL transaction per batch through [`store`]); the [`breaker`] switches the
//! batches to MySQL row locks alone (the fallback) while Redis is unavailable. Side
//! effects leave through the [`outbox`] to Kafka ([`kafka`] has the clients), where the
//! [`consumers`] apply them; what keeps failing goes to a dead-letter topic
//! ([`dead_letters`]). [`http`] is the API and [`startup`] wires it all and owns every
//! background task.
//!
//! Modules only import modules listed before them here ([`support`] is the ground floor).

pub mod support;

pub mod domain;

pub mod configuration;
pub mod telemetry;

pub mod redis_support;
pub mod store;

pub mod breaker;
pub mod idempotency;
pub mod lock;

pub mod kafka;
pub mod outbox;

pub mod wallet;

pub mod dead_letters;

pub mod consumers;

pub mod audit;
pub mod http;
pub mod startup;
