//! Integration tests against real MariaDB/MySQL and Redis. One binary, many modules:
//! every test spawns its own app on port 0 with its own database and Redis key prefix.

mod bad_input;
mod batches;
mod broker_faults;
mod cluster;
mod concurrency;
mod connections;
mod consumers;
mod dead_letters;
mod events;
mod faults;
mod hardening;
mod holds;
mod identifiers;
mod idle;
mod limits;
mod lock;
mod payment_requests;
mod payments;
mod points;
mod refunds;
mod refusals;
mod relay;
mod scopes;
mod sentinel;
mod shutdown;
mod support;
mod timeouts;
mod trust;
