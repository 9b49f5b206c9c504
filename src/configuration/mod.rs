//! Settings, read from `WALLET_*` environment variables with local defaults.
//!
//! Every variable is listed in `docs/operations.md`. Tests build [`Settings`] directly.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use rust_decimal::Decimal;
use sha2::Digest;

use crate::domain::Currency;

mod checks;

/// Everything the service needs to start.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port` to listen on; port 0 picks a free one.
    pub http_addr: String,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub lock: LockSettings,
    pub idempotency: IdempotencySettings,
    pub kafka: KafkaSettings,
    pub api: ApiSettings,
    pub connections: ConnectionSettings,
    pub holds: HoldSettings,
    /// Points per unit of currency paid (0.01 = 1 %), rounded down per payment.
    pub points_rate: Decimal,
    /// The one currency this deployment books in.
    pub currency: Currency,
    /// `json` for machine-readable logs, anything else for human-readable ones.
    pub log_format: String,
}

/// How long holds live, and how often expired ones are released.
#[derive(Clone, Copy, Debug)]
pub struct HoldSettings {
    /// A hold's life when the request does not say (`expiresInSeconds`).
    pub default_ttl: Duration,
    /// The longest life a hold may ask for.
    pub max_ttl: Duration,
    /// How often the sweeper looks for holds past their deadline.
    pub sweep_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before it answers 503.
    pub acquire_timeout: Duration,
    /// Apply `migrations/` at start-up (takes a database lock, so instances may race).
    pub run_migrations: bool,
}

#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: String,
    /// Seed nodes of a Redis Cluster (`WALLET_REDIS_CLUSTER_NODES`); empty: one node at
    /// `url`.
    pub cluster_nodes: Vec<String>,
    /// Sentinels watching the primary (`WALLET_REDIS_SENTINELS`); set, the service
    /// connects to the primary they name for `sentinel_master`, and follows a failover.
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under (`WALLET_REDIS_SENTINEL_MASTER`).
    pub sentinel_master: String,
    /// Credentials for the primary and replicas found through the Sentinels
    /// (`WALLET_REDIS_SENTINEL_MASTER_USERNAME`, `WALLET_REDIS_SENTINEL_MASTER_PASSWORD`);
    /// the Sentinels' own go in their URLs.
    pub sentinel_master_username: Option<String>,
    pub sentinel_master_password: Option<String>,
    /// Prefix of every key and channel, so deployments (and tests) can share a Redis.
    pub key_prefix: String,
    pub pool_size: usize,
    /// Upper bound on any single Redis call; past it Redis counts as failing.
    pub command_timeout: Duration,
}

/// How wallets are serialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// Redis lock while Redis is healthy, MySQL `FOR UPDATE` while it is not.
    Auto,
    /// Redis lock only: Redis errors answer 503.
    Redis,
    /// MySQL `FOR UPDATE` only (used to benchmark and to test mixed fleets).
    Mysql,
}

impl FromStr for LockMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "redis" => Ok(Self::Redis),
            "mysql" => Ok(Self::Mysql),
            other => anyhow::bail!("lock mode must be auto, redis or mysql, not {other:?}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct LockSettings {
    pub mode: LockMode,
    /// Lease of the Redis lock. Renewed every third of it while held, so it only has to
    /// outlast one renewal interval plus a Redis round trip.
    pub lease: Duration,
    /// How long a request waits for a wallet's lock before it answers 503 `lock_timeout`.
    pub wait: Duration,
    /// Longest sleep of a waiter between pub/sub wake-ups (the safety net for a lost message).
    pub poll_interval: Duration,
    /// Consecutive Redis failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How often an open breaker probes Redis.
    pub breaker_probe_interval: Duration,
    /// Most debits and top-ups one transaction applies together (group commit); 1 runs
    /// each request in a transaction of its own.
    pub batch_max: usize,
}

#[derive(Clone, Debug)]
pub struct IdempotencySettings {
    /// How long a finished reply is replayed from Redis (the database keeps it forever).
    pub reply_ttl: Duration,
    /// How long an unfinished claim blocks its key; must exceed the longest request.
    pub claim_ttl: Duration,
}

/// Who may call the API, how often, and how long a request may take.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// `scope:key` or `scope:sha256:<hex>` entries, comma-separated; scope is `checkout`,
    /// `funding` or `admin`.
    pub keys: Vec<ApiKey>,
    /// A development run may start without keys (authentication is then off).
    pub development: bool,
    /// Requests per second per API key (per instance), and the burst above it.
    pub rate_per_second: u32,
    pub burst: u32,
    /// Longest a request may take; a debit past it rolls back and answers 503.
    pub request_timeout: Duration,
    /// Requests served at once; more are shed with 503 rather than queued.
    pub max_in_flight: usize,
}

/// How the HTTP server bounds its connections, so that clients that open many, or send
/// slowly, cannot use up the descriptors or the memory the service needs.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    /// A request's head must arrive within this, from its first byte.
    pub header_timeout: Duration,
    /// A connection with no request in progress is closed after this.
    pub keep_alive_timeout: Duration,
    /// Connections open at once; at the cap a new one closes the idlest. By default
    /// 4,096, or less where the descriptor limit asks for it.
    pub max_connections: usize,
    /// The process's open-files limit (`ulimit -n`), read at start-up.
    pub open_files_limit: u64,
}

impl ConnectionSettings {
    /// Descriptors kept apart from HTTP connections: the MySQL and Redis pools, and a
    /// fixed allowance for the rest (Redis pub/sub, the Kafka clients' sockets and
    /// librdkafka's internal pipes, the listener, the runtime, logs).
    pub fn reserved_descriptors(database: &DatabaseSettings, redis: &RedisSettings) -> u64 {
        u64::from(database.max_connections) + redis.pool_size as u64 + 128
    }
}

/// The soft open-files limit of this process (`RLIMIT_NOFILE`); `u64::MAX` when unlimited
/// or unknown.
pub fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return u64::MAX;
    }
    limit.rlim_cur
}

/// The default connection cap when the descriptor limit allows it.
const DEFAULT_MAX_CONNECTIONS: u64 = 4_096;

/// What a key may do. Every key may create and read wallets, pay, cancel and read
/// payments; two kinds of route need a scope of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A checkout: the wallet and payment routes.
    Checkout,
    /// A funding source (the gateway that took the customer's money): top-ups as well.
    /// Top-ups create money in a wallet, so a leaked checkout key must not reach them.
    Funding,
    /// An operator: the failed-events routes as well.
    Admin,
}

/// A configured API key, kept only as its SHA-256.
#[derive(Clone)]
pub struct ApiKey {
    pub scope: Scope,
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// A key given in plain text (hashed at once; the text is not kept).
    pub fn plain(scope: Scope, key: &str) -> Self {
        Self {
            scope,
            sha256: sha2::Sha256::digest(key.as_bytes()).into(),
        }
    }
}

/// The `WALLET_API_KEYS` list.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys(pub Vec<ApiKey>);

impl FromStr for ApiKeys {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut keys = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (scope, key) = entry
                .split_once(':')
                .ok_or("an API key entry is scope:key or scope:sha256:<hex>")?;
            let scope = match scope {
                "checkout" => Scope::Checkout,
                "funding" => Scope::Funding,
                "admin" => Scope::Admin,
                _ => {
                    return Err(format!(
                        "unknown API key scope {scope:?} (checkout, funding or admin)"
                    ))
                }
            };
            let key = match key.strip_prefix("sha256:") {
                Some(hex) => ApiKey {
                    scope,
                    sha256: decode_sha256(hex).ok_or("a sha256: key is 64 hex digits")?,
                },
                None if key.is_empty() => return Err("an API key is empty".into()),
                None => ApiKey::plain(scope, key),
            };
            keys.push(key);
        }
        Ok(Self(keys))
    }
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Kafka: the outbox relay, the consumers and the topics they use.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Completed, cancelled and declined payments.
    pub events_topic: String,
    /// Payments requested by event (`{"orderId","userId","amount"}`).
    pub requests_topic: String,
    pub points_group: String,
    pub requests_group: String,
    pub dlt_group: String,
    /// Create the topics (and their `.DLT`) at start-up when missing.
    pub create_topics: bool,
    pub partitions: i32,
    pub replication: i32,
    /// Which workers this process runs; each may run in a process of its own.
    pub relay_enabled: bool,
    pub points_consumer_enabled: bool,
    pub requests_consumer_enabled: bool,
    pub dlt_consumer_enabled: bool,
    /// Outbox rows published per relay transaction, all handed to the producer at once.
    pub relay_batch: u32,
    /// How often the relay looks for rows when nothing woke it.
    pub relay_poll: Duration,
    /// How long a consumer's fetch may wait at the broker for records
    /// (`fetch.wait.max.ms`). Tansu answers a fetch only once this has passed, records or
    /// not, so it bounds how long a published event waits for its consumer; consumers
    /// with nothing to do stop fetching ([`KafkaSettings::idle_after`]).
    pub fetch_wait: Duration,
    /// A consumer that received nothing for this long stops fetching until records are
    /// written to its topics or its next look ([`crate::kafka::wakeups`]); zero: it
    /// always fetches (what a Kafka cluster, which answers a fetch as records arrive,
    /// is fine with).
    pub idle_after: Duration,
    /// How often a consumer that stopped fetching looks for records nobody announced
    /// (payment requests from a checkout, a wake-up lost while Redis was down).
    pub idle_look: Duration,
    /// How long the dead-letter publisher's producer keeps trying to deliver one record
    /// (`message.timeout.ms`). The relay's records never time out: after this long
    /// without an answer it checks its producer, and replaces it after three of these
    /// if the broker answers meanwhile.
    pub delivery_timeout: Duration,
    /// Events waiting longer than this make the outbox `lagging` (some still leave) or
    /// `stalled` (none left for as long) in `/readyz` and the metrics.
    pub outbox_stall_after: Duration,
    /// In-process attempts per record before it goes to the dead-letter topic.
    pub retry_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
}

impl KafkaSettings {
    /// The dead-letter topic of `topic`.
    pub fn dlt(topic: &str) -> String {
        format!("{topic}.DLT")
    }
}

impl Settings {
    /// Reads the settings from the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The local defaults, ignoring the environment (tests start from these).
    pub fn local_defaults() -> Self {
        Self::from_lookup(|_| None).expect("the defaults parse")
    }

    /// Reads each setting through `lookup`, falling back to its default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let env = Env(lookup);
        let database = DatabaseSettings {
            url: env.get(
                "WALLET_DATABASE_URL",
                "mysql://wallet:wallet@127.0.0.1:3306/wallet".to_string(),
            )?,
            max_connections: env.get("WALLET_DB_MAX_CONNECTIONS", 32)?,
            acquire_timeout: env.millis("WALLET_DB_ACQUIRE_TIMEOUT_MS", 5_000)?,
            run_migrations: env.get("WALLET_RUN_MIGRATIONS", true)?,
        };
        let redis = RedisSettings {
            url: env.get("WALLET_REDIS_URL", "redis://127.0.0.1:6379".to_string())?,
            cluster_nodes: env.list("WALLET_REDIS_CLUSTER_NODES")?,
            sentinels: env.list("WALLET_REDIS_SENTINELS")?,
            sentinel_master: env.get("WALLET_REDIS_SENTINEL_MASTER", "mymaster".to_string())?,
            sentinel_master_username: env.optional("WALLET_REDIS_SENTINEL_MASTER_USERNAME"),
            sentinel_master_password: env.optional("WALLET_REDIS_SENTINEL_MASTER_PASSWORD"),
            key_prefix: env.get("WALLET_REDIS_KEY_PREFIX", "wallet".to_string())?,
            pool_size: env.get("WALLET_REDIS_POOL_SIZE", 16)?,
            command_timeout: env.millis("WALLET_REDIS_TIMEOUT_MS", 500)?,
        };
        let open_files_limit = open_files_limit();
        let room = open_files_limit
            .saturating_sub(ConnectionSettings::reserved_descriptors(&database, &redis));
        let connections = ConnectionSettings {
            header_timeout: env.millis("WALLET_HTTP_HEADER_TIMEOUT_MS", 10_000)?,
            keep_alive_timeout: env.millis("WALLET_HTTP_KEEP_ALIVE_TIMEOUT_MS", 60_000)?,
            max_connections: env.get(
                "WALLET_HTTP_MAX_CONNECTIONS",
                room.clamp(1, DEFAULT_MAX_CONNECTIONS) as usize,
            )?,
            open_files_limit,
        };
        Ok(Self {
            http_addr: env.get("WALLET_HTTP_ADDR", "127.0.0.1:8080".to_string())?,
            database,
            redis,
            lock: LockSettings {
                mode: env.get("WALLET_LOCK_MODE", LockMode::Auto)?,
                lease: env.millis("WALLET_LOCK_LEASE_MS", 3_000)?,
                wait: env.millis("WALLET_LOCK_WAIT_MS", 5_000)?,
                poll_interval: env.millis("WALLET_LOCK_POLL_MS", 200)?,
                breaker_threshold: env.get("WALLET_BREAKER_THRESHOLD", 3)?,
                breaker_probe_interval: env.millis("WALLET_BREAKER_PROBE_MS", 1_000)?,
                batch_max: env.get("WALLET_BATCH_MAX", 128)?,
            },
            idempotency: IdempotencySettings {
                reply_ttl: Duration::from_secs(env.get("WALLET_IDEMPOTENCY_TTL_SECS", 86_400)?),
                claim_ttl: env.millis("WALLET_IDEMPOTENCY_CLAIM_TTL_MS", 15_000)?,
            },
            kafka: KafkaSettings {
                brokers: env.get("WALLET_KAFKA_BROKERS", "127.0.0.1:9092".to_string())?,
                events_topic: env
                    .get("WALLET_EVENTS_TOPIC", "wallet.payment-events".to_string())?,
                requests_topic: env.get(
                    "WALLET_REQUESTS_TOPIC",
                    "wallet.payment-requests".to_string(),
                )?,
                points_group: env.get("WALLET_POINTS_GROUP", "wallet-points".to_string())?,
                requests_group: env.get(
                    "WALLET_REQUESTS_GROUP",
                    "wallet-payment-requests".to_string(),
                )?,
                dlt_group: env.get("WALLET_DLT_GROUP", "wallet-dlt".to_string())?,
                create_topics: env.get("WALLET_KAFKA_CREATE_TOPICS", true)?,
                partitions: env.get("WALLET_KAFKA_PARTITIONS", 3)?,
                replication: env.get("WALLET_KAFKA_REPLICATION", 1)?,
                relay_enabled: env.get("WALLET_OUTBOX_RELAY", true)?,
                points_consumer_enabled: env.get("WALLET_POINTS_CONSUMER", true)?,
                requests_consumer_enabled: env.get("WALLET_REQUESTS_CONSUMER", true)?,
                dlt_consumer_enabled: env.get("WALLET_DLT_CONSUMER", true)?,
                relay_batch: env.get("WALLET_OUTBOX_BATCH", 1_000)?,
                relay_poll: env.millis("WALLET_OUTBOX_POLL_MS", 500)?,
                fetch_wait: env.millis("WALLET_KAFKA_FETCH_WAIT_MS", 30)?,
                idle_after: env.millis("WALLET_KAFKA_IDLE_AFTER_MS", 2_000)?,
                idle_look: env.millis("WALLET_KAFKA_IDLE_LOOK_MS", 3_000)?,
                delivery_timeout: env.millis("WALLET_KAFKA_DELIVERY_TIMEOUT_MS", 10_000)?,
                outbox_stall_after: env.millis("WALLET_OUTBOX_STALL_AFTER_MS", 60_000)?,
                retry_attempts: env.get("WALLET_CONSUMER_ATTEMPTS", 3)?,
                retry_base: env.millis("WALLET_CONSUMER_BACKOFF_BASE_MS", 200)?,
                retry_cap: env.millis("WALLET_CONSUMER_BACKOFF_CAP_MS", 5_000)?,
            },
            api: ApiSettings {
                keys: env.get("WALLET_API_KEYS", ApiKeys::default())?.0,
                development: env.get("WALLET_DEVELOPMENT", false)?,
                rate_per_second: env.get("WALLET_RATE_LIMIT_PER_SECOND", 2_000)?,
                burst: env.get("WALLET_RATE_LIMIT_BURST", 500)?,
                request_timeout: env.millis("WALLET_REQUEST_TIMEOUT_MS", 10_000)?,
                max_in_flight: env.get("WALLET_MAX_IN_FLIGHT", 1_024)?,
            },
            connections,
            holds: HoldSettings {
                default_ttl: Duration::from_secs(env.get("WALLET_HOLD_DEFAULT_TTL_SECS", 604_800)?),
                max_ttl: Duration::from_secs(env.get("WALLET_HOLD_MAX_TTL_SECS", 2_592_000)?),
                sweep_interval: env.millis("WALLET_HOLD_SWEEP_MS", 1_000)?,
            },
            points_rate: env.get("WALLET_POINTS_RATE", Decimal::new(1, 2))?,
            currency: env.get("WALLET_CURRENCY", Currency::KRW)?,
            log_format: env.get("WALLET_LOG_FORMAT", "pretty".to_string())?,
        })
    }
}

/// Typed access to variables, each with its default.
struct Env<F>(F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    /// A value that has no default; `None` when unset or empty.
    fn optional(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.is_empty())
    }

    /// A comma-separated list; empty when unset.
    fn list(&self, name: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .get(name, String::new())?
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect())
    }

    fn get<T>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match (self.0)(name) {
            Some(raw) => raw
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("invalid {name}={raw:?}")),
            None => Ok(default),
        }
    }

    fn millis(&self, name: &str, default: u64) -> anyhow::Result<Duration> {
        self.get(name, default).map(Duration::from_millis)
    }
}
