//! The Redis idempotency cache: a Lua function claims a key or answers from it
//! (`lua/lib/claim.lua`, run by the engine's batch start with the locks,
//! `lua/batch_begin.lua`), another caches the reply or frees the key
//! (`lua/lib/settle.lua`).
//!
//! The cache spares the database and the lock for repeats; it is not the last line.
//! A key lost with Redis (or past its TTL) is caught by the database's unique keys,
//! which replay the same answer.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::domain::Identifier;
use crate::redis_support::{bounded, per_slot, KeySpace, RedisFault, SlotAware};

/// What the cache knows about a key.
#[derive(Debug)]
pub enum Claim {
    /// The caller owns the key now; it must `complete` or `abandon` it.
    Claimed(ClaimToken),
    /// A finished request: its reply, as stored.
    Done(String),
    /// The same request is being processed; it may be retried after this long.
    Pending(Duration),
    /// The key was used for a request with another fingerprint.
    Mismatch,
}

/// Proof of ownership of a claim.
#[derive(Debug, Clone)]
pub struct ClaimToken(String);

/// The idempotency cache.
#[derive(Clone)]
pub struct IdempotencyCache {
    keys: KeySpace,
    reply_ttl: Duration,
    claim_ttl: Duration,
    timeout: Duration,
    /// Shared: a `Script` carries its source, and the cache is cloned with every request.
    settle: Arc<Script>,
}

/// What names a request's entry in the cache: its hash tag (`Keyed::cache_tag`), its
/// scope and its id.
#[derive(Clone, Copy)]
pub struct CacheKey<'a> {
    pub tag: &'a Identifier,
    pub scope: &'static str,
    pub id: &'a Identifier,
}

impl CacheKey<'_> {
    fn in_space(&self, keys: &KeySpace) -> String {
        keys.idempotency(self.tag, self.scope, self.id)
    }
}

/// A key to claim, and what the request asked for.
pub struct ClaimRequest<'a> {
    pub key: CacheKey<'a>,
    pub fingerprint: &'a str,
}

/// How a claim ends once its request is answered.
pub enum Settlement<'a> {
    /// Applied (or found applied): cache `reply` for the reply TTL.
    Done {
        fingerprint: &'a str,
        reply: &'a str,
    },
    /// Nothing was applied: free the key for an immediate retry.
    Abandon,
}

/// A claim to settle, with the token that proves it is ours.
pub struct Settle<'a> {
    pub key: CacheKey<'a>,
    pub token: &'a ClaimToken,
    pub how: Settlement<'a>,
}

impl IdempotencyCache {
    pub fn new(
        keys: KeySpace,
        reply_ttl: Duration,
        claim_ttl: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            keys,
            reply_ttl,
            claim_ttl,
            timeout,
            settle: Arc::new(Script::new(concat!(
                include_str!("../../lua/lib/entry.lua"),
                include_str!("../../lua/lib/settle.lua"),
                include_str!("../../lua/idempotency_settle.lua")
            ))),
        }
    }

    /// The Redis key of `key` (its hash slot is its tag's).
    pub fn redis_key(&self, key: CacheKey<'_>) -> String {
        key.in_space(&self.keys)
    }

    /// How long a claim lives when its process dies, in ms: a batch start's argument.
    pub fn claim_ttl_ms(&self) -> u64 {
        self.claim_ttl.as_millis() as u64
    }

    /// How long a reply is cached, in ms: a batch end's argument.
    pub fn reply_ttl_ms(&self) -> u64 {
        self.reply_ttl.as_millis() as u64
    }

    /// Adds claiming `request` under `token` to a script call (`lua/lib/claim.lua`'s
    /// key, fingerprint and owner).
    pub fn push_claim(
        &self,
        call: &mut redis::ScriptInvocation<'_>,
        request: &ClaimRequest<'_>,
        token: &ClaimToken,
    ) {
        call.key(self.redis_key(request.key))
            .arg(request.fingerprint)
            .arg(&token.0);
    }

    /// Adds settling `claim` to a script call (`lua/lib/settle.lua`'s key, action,
    /// owner, fingerprint and reply).
    pub fn push_settle(&self, call: &mut redis::ScriptInvocation<'_>, claim: &Settle<'_>) {
        call.key(self.redis_key(claim.key));
        match claim.how {
            Settlement::Done { fingerprint, reply } => call
                .arg("done")
                .arg(&claim.token.0)
                .arg(fingerprint)
                .arg(reply),
            Settlement::Abandon => call.arg("abandon").arg(&claim.token.0).arg("").arg(""),
        };
    }

    /// True when a request holds the key's claim now (claimed, not yet answered).
    pub async fn is_pending<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        key: CacheKey<'_>,
    ) -> Result<bool, RedisFault> {
        let entry: Option<String> = bounded(
            self.timeout,
            redis::cmd("GET")
                .arg(key.in_space(&self.keys))
                .query_async(conn),
        )
        .await?;
        Ok(entry.is_some_and(|entry| is_pending_entry(&entry)))
    }

    /// Completes or abandons every claim of a batch in one round trip (one call per node
    /// on a cluster).
    pub async fn settle_all<C: SlotAware>(
        &self,
        conn: &mut C,
        claims: &[Settle<'_>],
    ) -> Result<(), RedisFault> {
        if claims.is_empty() {
            return Ok(());
        }
        let key = |i: usize| self.redis_key(claims[i].key);
        let build = |call: &mut redis::ScriptInvocation<'_>, items: &[usize]| {
            call.arg(self.reply_ttl_ms());
            for &i in items {
                self.push_settle(call, &claims[i]);
            }
        };
        bounded(
            self.timeout,
            per_slot::<_, i64>(conn, &self.settle, claims.len(), key, build),
        )
        .await?;
        Ok(())
    }
}

/// True for an entry (as `lua/lib/entry.lua` writes them) whose request holds its
/// claim now.
pub fn is_pending_entry(entry: &str) -> bool {
    entry.starts_with("p\n")
}

impl ClaimToken {
    /// A random token, which proves the claim taken with it is ours.
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        Self::new()
    }
}

impl Claim {
    /// One answer of `claim` (`lua/lib/claim.lua`), for the claim made with `token`.
    pub fn read(reply: &redis::Value, token: ClaimToken) -> Claim {
        let empty = Vec::new();
        let reply = match reply {
            redis::Value::Array(items) => items,
            _ => &empty,
        };
        let text = |i: usize| -> Option<String> {
            reply
                .get(i)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
        };
        match text(0).as_deref() {
            Some("claimed") => Claim::Claimed(token),
            Some("done") => Claim::Done(text(1).unwrap_or_default()),
            Some("mismatch") => Claim::Mismatch,
            _ => {
                let ttl_ms: i64 = reply
                    .get(1)
                    .and_then(|v| redis::from_redis_value_ref(v).ok())
                    .unwrap_or(1_000);
                Claim::Pending(Duration::from_millis(ttl_ms.max(1) as u64))
            }
        }
    }
}
