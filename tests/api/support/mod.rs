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

/// One more instance's lock on the Redis and key prefix of `settings`, its upkeep
/// running for the rest of the test.
pub fn wallet_lock(settings: &wallet::configuration::Settings) -> wallet::lock::WalletLock {
    let redis = &settings.redis;
    let (lock, upkeep) = wallet::lock::WalletLock::new(
        wallet::redis_support::PubSubNodes::Nodes(vec![
            redis::Client::open(redis.url.as_str()).unwrap()
        ]),
        wallet::redis_support::KeySpace::new(&redis.key_prefix),
        settings.lock.clone(),
        redis.command_timeout,
    );
    tokio::spawn(upkeep.listen());
    lock
}

/// A connection to the Redis of `settings`.
pub async fn connection(
    settings: &wallet::configuration::Settings,
) -> redis::aio::MultiplexedConnection {
    redis::Client::open(settings.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
