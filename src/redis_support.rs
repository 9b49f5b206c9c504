//! What the Redis-backed parts share: key layout, a bounded call, one error type.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
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
    Cluster(ClusterConnection, ClusterSlots),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn, _) => conn.req_packed_command(cmd),
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
            Self::Cluster(conn, _) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(conn) => conn.get_db(),
            Self::Cluster(conn, _) => conn.get_db(),
        }
    }
}

/// A connection the batch scripts can run on, which says whether it reaches a Redis
/// Cluster, where a script call may only touch keys of one hash slot.
pub trait SlotAware: ConnectionLike + Clone + Send + Sync {
    /// The cluster connection and where the cluster's slots live; none on one node.
    fn cluster(&self) -> Option<(&ClusterConnection, &ClusterSlots)>;
}

impl SlotAware for RedisConnection {
    fn cluster(&self) -> Option<(&ClusterConnection, &ClusterSlots)> {
        match self {
            Self::Node(_) => None,
            Self::Cluster(conn, slots) => Some((conn, slots)),
        }
    }
}

impl SlotAware for MultiplexedConnection {
    fn cluster(&self) -> Option<(&ClusterConnection, &ClusterSlots)> {
        None
    }
}

/// Runs a batch script over `items`: one call on a single node; on a cluster, where a
/// call may touch only one hash slot, one call per slot of the items (`slot_key` names
/// a key of each item), the calls for one node sent to it as one pipeline
/// ([`on_cluster`]). `build` fills one call with the arguments every call takes and with
/// the items whose indices it is given. Returns each call's answer with its items'
/// indices.
///
/// A call may run twice: the cluster client sends a pipeline again when a node's
/// connection failed or one of its calls was redirected (`MOVED`, `ASK`, `TRYAGAIN`),
/// calls that already ran included. So every batch script answers a second run with
/// the same owner as it answered the first (`lua/lib/claim.lua`, `lua/lib/acquire.lua`).
pub async fn per_slot<C: SlotAware, T: FromRedisValue>(
    conn: &C,
    script: &Script,
    items: usize,
    slot_key: impl Fn(usize) -> String,
    build: impl Fn(&mut ScriptInvocation<'_>, &[usize]),
) -> redis::RedisResult<Vec<(Vec<usize>, T)>> {
    let Some((cluster, slots)) = conn.cluster() else {
        let all: Vec<usize> = (0..items).collect();
        let mut invocation = script.prepare_invoke();
        build(&mut invocation, &all);
        let answer = invocation.invoke_async(&mut conn.clone()).await?;
        return Ok(vec![(all, answer)]);
    };
    let groups = grouped(items, |item| hash_slot(slot_key(item).as_bytes()));
    let calls: Vec<(u16, ScriptInvocation<'_>)> = groups
        .iter()
        .map(|(slot, group)| {
            let mut invocation = script.prepare_invoke();
            build(&mut invocation, group);
            (*slot, invocation)
        })
        .collect();
    let answers = on_cluster(cluster, slots, &calls).await?;
    Ok(groups
        .into_iter()
        .map(|(_, group)| group)
        .zip(answers)
        .collect())
}

/// The indices `0..items` grouped by `key`, each group with its key, in the order of
/// their first items.
fn grouped<K: PartialEq>(items: usize, key: impl Fn(usize) -> K) -> Vec<(K, Vec<usize>)> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for item in 0..items {
        let k = key(item);
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, group)) => group.push(item),
            None => groups.push((k, vec![item])),
        }
    }
    groups
}

/// Sends script `calls` (each with the hash slot of its keys) to a cluster: the calls
/// for one node, by [`ClusterSlots`], as one pipeline, routed by its first call's slot,
/// every node's at once. The cluster client sends a pipeline again, whole, when one of
/// its calls is redirected, and a pipeline with a call to a slot on the move (`ASK`,
/// `MOVED`) goes back and forth until it fails. So a call that found its script missing
/// (`NOSCRIPT`: it did not run) and the calls of a pipeline that failed are sent again
/// one by one, which loads the script, follows each call's own redirect and runs again
/// what had run (the scripts answer a second run as the first, [`per_slot`]); a failed
/// pipeline also has the slot map read again, in the background.
async fn on_cluster<T: FromRedisValue>(
    cluster: &ClusterConnection,
    slots: &ClusterSlots,
    calls: &[(u16, ScriptInvocation<'_>)],
) -> redis::RedisResult<Vec<T>> {
    use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
    let map = slots.current(cluster);
    // The calls by node; a slot the map does not place (its calls' slots differ) is a
    // node of its own.
    let nodes = grouped(calls.len(), |call| {
        let slot = calls[call].0;
        map.node_of(slot).ok_or(slot)
    });
    let sent = futures_util::future::join_all(nodes.iter().map(|(_, on_node)| {
        let mut pipe = redis::pipe();
        for &call in on_node {
            pipe.invoke_script(&calls[call].1);
        }
        let route =
            SingleNodeRoutingInfo::SpecificNode(Route::new(calls[on_node[0]].0, SlotAddr::Master));
        let mut cluster = cluster.clone();
        async move { cluster.route_pipeline(pipe, 0, on_node.len(), route).await }
    }))
    .await;
    let mut answers: Vec<Option<T>> = (0..calls.len()).map(|_| None).collect();
    let mut again = Vec::new();
    for ((_, on_node), sent) in nodes.iter().zip(sent) {
        let values = match sent {
            Ok(values) if values.len() == on_node.len() => values,
            Ok(_) => return Err(unanswered_error()),
            Err(e) => {
                tracing::debug!(error = %e, "a node's pipeline failed; its calls go one by one");
                slots.stale(cluster);
                again.extend_from_slice(on_node);
                continue;
            }
        };
        for (&call, value) in on_node.iter().zip(values) {
            match value {
                Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript) => {
                    again.push(call)
                }
                value => answers[call] = Some(T::from_redis_value(value.extract_error()?)?),
            }
        }
    }
    let resent = futures_util::future::try_join_all(again.iter().map(|&call| {
        let mut cluster = cluster.clone();
        async move { calls[call].1.invoke_async::<T>(&mut cluster).await }
    }))
    .await?;
    for (call, answer) in again.into_iter().zip(resent) {
        answers[call] = Some(answer);
    }
    answers
        .into_iter()
        .map(|answer| answer.ok_or_else(unanswered_error))
        .collect()
}

/// Where a Redis Cluster's hash slots live, as this process last read it (`CLUSTER
/// SLOTS`): the primary of each range of slots, shared by every connection of a pool.
/// It only groups a batch's calls by node. The cluster client routes each pipeline by
/// its first call's slot, on a map of its own that follows failovers, so a stale map
/// here costs a redirect or a pipeline sent again call by call, never a wrong answer.
/// The map is read in the background, never in a batch's way: before the first read
/// (and while the cluster does not answer it) each slot's calls are a pipeline of their
/// own, and after a failed pipeline the map in hand serves until a new one is read.
#[derive(Clone, Default)]
pub struct ClusterSlots(Arc<Mutex<KnownSlots>>);

#[derive(Default)]
struct KnownSlots {
    /// None until a map was read.
    ranges: Option<Arc<SlotRanges>>,
    reading: bool,
}

/// Ranges of hash slots, each with its primary's index among the primaries.
#[derive(Default)]
struct SlotRanges {
    ranges: Vec<(u16, u16, usize)>,
}

impl SlotRanges {
    fn node_of(&self, slot: u16) -> Option<usize> {
        let at = self.ranges.partition_point(|(_, last, _)| *last < slot);
        self.ranges
            .get(at)
            .filter(|(first, _, _)| *first <= slot)
            .map(|(_, _, node)| *node)
    }
}

impl ClusterSlots {
    /// The map in hand; before one was read, an empty one, and a read started.
    fn current(&self, cluster: &ClusterConnection) -> Arc<SlotRanges> {
        let mut known = self.0.lock().expect("slot map poisoned");
        if known.ranges.is_none() {
            self.read_in_background(&mut known, cluster);
        }
        known.ranges.clone().unwrap_or_default()
    }

    /// Starts reading the map again (one read at a time), after a failed pipeline.
    fn stale(&self, cluster: &ClusterConnection) {
        let mut known = self.0.lock().expect("slot map poisoned");
        self.read_in_background(&mut known, cluster);
    }

    fn read_in_background(&self, known: &mut KnownSlots, cluster: &ClusterConnection) {
        if known.reading {
            return;
        }
        known.reading = true;
        let (slots, cluster) = (self.clone(), cluster.clone());
        tokio::spawn(async move {
            let read = tokio::time::timeout(Duration::from_secs(5), Self::read(&cluster)).await;
            let mut known = slots.0.lock().expect("slot map poisoned");
            known.reading = false;
            match read {
                Ok(Ok(ranges)) => known.ranges = Some(Arc::new(ranges)),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not read the cluster's slot map"),
                Err(_) => tracing::warn!("the cluster did not give its slot map within 5 s"),
            }
        });
    }

    async fn read(cluster: &ClusterConnection) -> redis::RedisResult<SlotRanges> {
        let mut cluster = cluster.clone();
        let answer: Vec<Vec<Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut cluster)
            .await?;
        let mut nodes: Vec<(String, i64)> = Vec::new();
        let mut ranges = Vec::new();
        for range in answer {
            let mut fields = range.into_iter();
            let (Some(first), Some(last), Some(primary)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(unanswered_error());
            };
            let first: u16 = redis::from_redis_value(first)?;
            let last: u16 = redis::from_redis_value(last)?;
            // A node: its host, its port, its id and, on newer servers, more.
            let mut primary = redis::from_redis_value::<Vec<Value>>(primary)?.into_iter();
            let (Some(host), Some(port)) = (primary.next(), primary.next()) else {
                return Err(unanswered_error());
            };
            let address: (String, i64) = (
                redis::from_redis_value(host)?,
                redis::from_redis_value(port)?,
            );
            let node = match nodes.iter().position(|n| *n == address) {
                Some(node) => node,
                None => {
                    nodes.push(address);
                    nodes.len() - 1
                }
            };
            ranges.push((first, last, node));
        }
        ranges.sort_unstable();
        Ok(SlotRanges { ranges })
    }
}

/// The hash slot of `key` on a Redis Cluster: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole key, modulo
/// 16,384.
pub fn hash_slot(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tag {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16_384
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
    RedisFault::Command(unanswered_error())
}

fn unanswered_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(
        "a batch script answered for fewer items than it was given",
    ))
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
    Ok((
        RedisPool::Cluster(pool, ClusterSlots::default()),
        PubSubNodes::Nodes(nodes),
    ))
}

/// Where the service's Redis connections come from.
#[derive(Clone)]
pub enum RedisPool {
    Node(deadpool_redis::Pool),
    /// With where the cluster's slots live, as last read.
    Cluster(deadpool_redis::cluster::Pool, ClusterSlots),
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
            RedisPool::Cluster(pool, slots) => RedisConnection::Cluster(
                (*bounded(self.timeout, pool.get()).await?).clone(),
                slots.clone(),
            ),
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

#[cfg(test)]
mod tests {
    use redis::cluster_routing::{Route, SlotAddr};

    use super::{hash_slot, SlotRanges};

    #[test]
    fn a_key_s_slot_is_the_one_redis_gives_it() {
        // The Redis Cluster specification's check value: CRC16 of "123456789" is 0x31C3.
        assert_eq!(hash_slot(b"123456789"), 0x31C3);
        for key in [
            "wallet:wallet:{u1}:lock",
            "wallet:request:{user-42}:payment:order-7",
            "no tag at all",
            "empty {} tag",
            "{}{u1}",
            "unclosed {u1",
            "",
        ] {
            assert_eq!(
                Route::new(hash_slot(key.as_bytes()), SlotAddr::Master),
                Route::with_key(key, SlotAddr::Master),
                "{key}"
            );
        }
        assert_eq!(hash_slot(b"a{u1}b"), hash_slot(b"{u1}"));
    }

    #[test]
    fn a_slot_is_placed_on_the_node_of_its_range() {
        let map = SlotRanges {
            ranges: vec![(0, 5460, 0), (5461, 10922, 1), (10923, 16383, 2)],
        };
        assert_eq!(map.node_of(0), Some(0));
        assert_eq!(map.node_of(5460), Some(0));
        assert_eq!(map.node_of(5461), Some(1));
        assert_eq!(map.node_of(16383), Some(2));
        let gap = SlotRanges {
            ranges: vec![(0, 99, 0), (200, 16383, 1)],
        };
        assert_eq!(gap.node_of(150), None);
        assert_eq!(SlotRanges::default().node_of(7), None);
    }
}
