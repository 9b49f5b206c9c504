//! What the Redis-backed parts share: key layout, a bounded call, one error type.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, ScriptInvocation, Value};

use crate::domain::Identifier;

/// Why a Redis call did not give an answer. Every variant means "Redis is not usable
/// right now" to the circuit breaker.
#[derive(Debug, thiserror::Error)]
pub enum RedisFault {
    #[error("redis command failed")]
    Command(#[from] redis::RedisError),
    #[error("no redis connection")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Runs one Redis call with an upper bound on its duration.
pub async fn bounded<T, E>(
    limit: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, RedisFault>
where
    RedisFault: From<E>,
{
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(RedisFault::from),
        Err(_) => Err(RedisFault::Timeout(limit)),
    }
}

/// Where a subscriber connects.
#[derive(Clone)]
pub enum PubSubNodes {
    /// One node, or a Redis Cluster's seed nodes, tried in turn: on a cluster a message
    /// published on any node reaches the subscribers of every node, so one node that
    /// answers is enough, whichever it is.
    Nodes(Vec<redis::Client>),
    /// The primary the Sentinels name at each connection (a message published on the
    /// primary reaches its subscribers; after a failover, the new primary's).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// How to connect to the primary they name (its credentials).
        node: deadpool_redis::sentinel::SentinelNodeConnectionInfo,
    },
}

impl PubSubNodes {
    /// The client to subscribe with on the `attempt`th connection.
    async fn client(&self, attempt: usize) -> redis::RedisResult<redis::Client> {
        match self {
            Self::Nodes(nodes) => Ok(nodes[attempt % nodes.len()].clone()),
            Self::Sentinel {
                sentinels,
                master,
                node,
            } => {
                redis::sentinel::SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(node.clone().into()),
                    redis::sentinel::SentinelServerType::Master,
                )?
                .async_get_client()
                .await
            }
        }
    }
}

/// Hands every message published on `channel` to `owner` for as long as it is alive
/// (`heard`, what the messages are, names them in the log). One subscriber connection,
/// which reconnects by itself, to the next of `nodes` each time.
pub async fn listen<T>(
    owner: Weak<T>,
    nodes: PubSubNodes,
    channel: String,
    heard: &'static str,
    on_message: impl Fn(&T, redis::Msg),
) {
    for attempt in 0.. {
        let connected = tokio::time::timeout(Duration::from_secs(2), async {
            let client = nodes.client(attempt).await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(mut pubsub)) = connected {
            tracing::debug!(%channel, heard, "listening");
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                on_message(&owner, message);
            }
        }
        if owner.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A connection to Redis: one node, or a Redis Cluster, whose client sends each command
/// to the node that serves its key's hash slot (following `MOVED` and `ASK`, loading a
/// script on every node that lacks it). Both multiplex: a clone shares the sockets.
#[derive(Clone)]
pub enum RedisConnection {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A connection the batch scripts can run on, which says whether a script call may only
/// touch keys of one hash slot.
pub trait SlotAware: ConnectionLike + Clone + Send + Sync {
    fn is_cluster(&self) -> bool;
}

impl SlotAware for RedisConnection {
    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl SlotAware for MultiplexedConnection {
    fn is_cluster(&self) -> bool {
        false
    }
}

/// Runs a batch script over `items`: one call on a single node; on a cluster, where a
/// call may touch only one hash slot, one call per slot of the items (`slot_key` names
/// a key of each item), all sent at once, so each node gets its calls pipelined in one
/// round trip. `build` fills one call with the arguments every call takes and with the
/// items whose indices it is given. Returns each call's answer with its items' indices.
pub async fn per_slot<C: SlotAware, T: FromRedisValue>(
    conn: &C,
    script: &Script,
    items: usize,
    slot_key: impl Fn(usize) -> String,
    build: impl Fn(&mut ScriptInvocation<'_>, &[usize]),
) -> redis::RedisResult<Vec<(Vec<usize>, T)>> {
    let groups: Vec<Vec<usize>> = if conn.is_cluster() {
        let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
        for item in 0..items {
            let slot = Slot::for_key(slot_key(item));
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, group)) => group.push(item),
                None => groups.push((slot, vec![item])),
            }
        }
        groups.into_iter().map(|(_, group)| group).collect()
    } else {
        vec![(0..items).collect()]
    };
    let invocations: Vec<ScriptInvocation<'_>> = groups
        .iter()
        .map(|group| {
            let mut invocation = script.prepare_invoke();
            build(&mut invocation, group);
            invocation
        })
        .collect();
    let answers = futures_util::future::try_join_all(invocations.iter().map(|invocation| {
        let mut conn = conn.clone();
        async move { invocation.invoke_async::<T>(&mut conn).await }
    }))
    .await?;
    Ok(groups.into_iter().zip(answers).collect())
}

/// Puts per-item answers of [`per_slot`] calls back in the items' order.
pub fn in_item_order<A>(items: usize, answers: Vec<(Vec<usize>, Vec<A>)>) -> Vec<Option<A>> {
    let mut ordered: Vec<Option<A>> = (0..items).map(|_| None).collect();
    for (indices, values) in answers {
        for (index, value) in indices.into_iter().zip(values) {
            ordered[index] = Some(value);
        }
    }
    ordered
}

/// A batch script's call that answered for fewer items than it was given.
pub fn unanswered() -> RedisFault {
    RedisFault::Command(redis::RedisError::from(std::io::Error::other(
        "a batch script answered for fewer items than it was given",
    )))
}

/// The pool the service's Redis connections come from, a single node's, a cluster's
/// (`WALLET_REDIS_CLUSTER_NODES`) or the Sentinel-named primary's
/// (`WALLET_REDIS_SENTINELS`), and where a subscriber may listen.
pub fn connect(
    settings: &crate::configuration::RedisSettings,
) -> anyhow::Result<(RedisPool, PubSubNodes)> {
    use anyhow::Context;
    let timeout = Some(settings.command_timeout);
    let timeouts = deadpool_redis::Timeouts {
        wait: timeout,
        create: timeout,
        recycle: timeout,
    };
    let pool_config = deadpool_redis::PoolConfig {
        max_size: settings.pool_size,
        timeouts,
        ..Default::default()
    };
    if !settings.sentinels.is_empty() {
        let node = deadpool_redis::sentinel::SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(deadpool_redis::RedisConnectionInfo {
                username: settings.sentinel_master_username.clone(),
                password: settings.sentinel_master_password.clone(),
                ..Default::default()
            }),
        };
        let mut config = deadpool_redis::sentinel::Config::from_urls(
            settings.sentinels.clone(),
            settings.sentinel_master.clone(),
            deadpool_redis::sentinel::SentinelServerType::Master,
        )
        .with_node_connection_info(Some(node.clone()));
        config.pool = Some(pool_config);
        let pool = config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .context("building the Redis Sentinel pool (WALLET_REDIS_SENTINELS)")?;
        let nodes = PubSubNodes::Sentinel {
            sentinels: settings.sentinels.clone(),
            master: settings.sentinel_master.clone(),
            node,
        };
        return Ok((RedisPool::Sentinel(pool), nodes));
    }
    if settings.cluster_nodes.is_empty() {
        let mut config = deadpool_redis::Config::from_url(&settings.url);
        config.pool = Some(pool_config);
        let pool = config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .context("building the Redis pool")?;
        let node =
            redis::Client::open(settings.url.as_str()).context("parsing WALLET_REDIS_URL")?;
        return Ok((RedisPool::Node(pool), PubSubNodes::Nodes(vec![node])));
    }
    let mut config = deadpool_redis::cluster::Config::from_urls(settings.cluster_nodes.clone());
    config.pool = Some(pool_config);
    let pool = config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .context("building the Redis Cluster pool")?;
    let nodes = settings
        .cluster_nodes
        .iter()
        .map(|url| redis::Client::open(url.as_str()))
        .collect::<Result<_, _>>()
        .context("parsing WALLET_REDIS_CLUSTER_NODES")?;
    Ok((RedisPool::Cluster(pool), PubSubNodes::Nodes(nodes)))
}

/// Where the service's Redis connections come from.
#[derive(Clone)]
pub enum RedisPool {
    Node(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
    /// Each connection made for the primary the Sentinels name when it is made.
    Sentinel(deadpool_redis::sentinel::Pool),
}

/// One multiplexed Redis connection shared by every request of the process, taken from
/// the deadpool pool and replaced from it after a failure.
///
/// A multiplexed connection pipelines concurrent commands over one socket (one per node
/// on a cluster), so sharing it costs nothing; checking a connection out of the pool per
/// request would cost a `PING` round trip each time (deadpool-redis verifies every
/// connection it hands out).
#[derive(Clone)]
pub struct SharedRedis {
    pool: RedisPool,
    current: Arc<Mutex<Option<RedisConnection>>>,
    timeout: Duration,
}

impl SharedRedis {
    pub fn new(pool: RedisPool, timeout: Duration) -> Self {
        Self {
            pool,
            current: Arc::new(Mutex::new(None)),
            timeout,
        }
    }

    /// The shared connection (a cheap clone), connecting first if there is none.
    pub async fn connection(&self) -> Result<RedisConnection, RedisFault> {
        if let Some(conn) = self.current.lock().expect("redis slot poisoned").clone() {
            return Ok(conn);
        }
        let conn = match &self.pool {
            RedisPool::Node(pool) => {
                RedisConnection::Node((*bounded(self.timeout, pool.get()).await?).clone())
            }
            RedisPool::Cluster(pool) => {
                RedisConnection::Cluster((*bounded(self.timeout, pool.get()).await?).clone())
            }
            // Taken out of the pool, so that the connection made after a failure asks the
            // Sentinels again rather than reusing one to a primary demoted meanwhile
            // (which still answers the pool's PING).
            RedisPool::Sentinel(pool) => {
                RedisConnection::Node(deadpool_redis::sentinel::Connection::take(
                    bounded(self.timeout, pool.get()).await?,
                ))
            }
        };
        *self.current.lock().expect("redis slot poisoned") = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the shared connection after a failure; the next call reconnects.
    pub fn reset(&self) {
        self.current.lock().expect("redis slot poisoned").take();
    }

    /// Upper bound of every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The key layout. Keys of one wallet share the hash tag `{userId}`, so the lock scripts,
/// which touch the lock and its fencing counter together, also run on Redis Cluster, and
/// a batch's claims and replies for one wallet are one script call on its node.
#[derive(Clone, Debug)]
pub struct KeySpace {
    /// Shared: the key space is cloned with every request.
    prefix: Arc<str>,
}

impl KeySpace {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into().into(),
        }
    }

    /// `wallet:wallet:{u1}:lock`, the per-wallet lock.
    pub fn lock(&self, user_id: &Identifier) -> String {
        format!("{}:wallet:{{{user_id}}}:lock", self.prefix)
    }

    /// `wallet:wallet:{u1}:fence`, the wallet's fencing-token counter.
    pub fn fence(&self, user_id: &Identifier) -> String {
        format!("{}:wallet:{{{user_id}}}:fence", self.prefix)
    }

    /// `wallet:request:{u1}:payment:order-1`, the claim or cached reply of one request, tagged
    /// with its wallet (a hold placement with its hold id, `Keyed::cache_tag`).
    pub fn idempotency(&self, tag: &Identifier, scope: &str, id: &Identifier) -> String {
        format!("{}:request:{{{tag}}}:{scope}:{id}", self.prefix)
    }

    /// `wallet:wallet:{u1}:contended`, set while someone waits for the lock, so a
    /// release announces itself only when somebody listens.
    pub fn contended(&self, user_id: &Identifier) -> String {
        format!("{}:wallet:{{{user_id}}}:contended", self.prefix)
    }

    /// The channel on which lock releases are announced.
    pub fn release_channel(&self) -> String {
        format!("{}:lock-released", self.prefix)
    }

    /// The channel on which instances say they wrote records to a topic
    /// ([`crate::kafka::wakeups`]).
    pub fn records_channel(&self) -> String {
        format!("{}:kafka-records", self.prefix)
    }
}
