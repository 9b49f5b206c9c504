//! What the tests share: the app under test and its settings (`app.rs`), servers the
//! tests start and kill themselves (`servers.rs`), Kafka clients and a broker of a
//! test's own (`kafka.rs`), a Redis primary killed under load (`failover.rs`), a TCP proxy that delays or cuts MySQL traffic
//! (`proxy.rs`), and waits on conditions (`wait.rs`).

mod app;
mod failover;
pub mod kafka;
pub mod proxy;
pub mod servers;
mod wait;

pub use app::*;
pub use failover::*;
pub use wait::*;

/// An identifier the test knows is valid.
pub fn id(value: &str) -> wallet::domain::Identifier {
    wallet::domain::Identifier::parse("id", value.to_owned()).unwrap()
}
