//! The Redis idempotency cache: one Lua script claims a key or answers from it.
//!
//! The cache spares the database and the lock for repeats; it is not the last line.
//! A key lost with Redis (or past its TTL) is caught by the database's unique keys,
//! which replay the same answer.

use std::time::Duration;

use redis::Script;

use crate::domain::Identifier;
use crate::redis_support::{bounded, KeySpace, RedisFault};

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
    claim: Script,
    complete: Script,
    abandon: Script,
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
            claim: Script::new(include_str!("../../lua/idempotency_claim.lua")),
            complete: Script::new(include_str!("../../lua/idempotency_complete.lua")),
            abandon: Script::new(include_str!("../../lua/idempotency_abandon.lua")),
        }
    }

    /// Claims `scope:id` for a request described by `fingerprint`.
    pub async fn claim<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        scope: &str,
        id: &Identifier,
        fingerprint: &str,
    ) -> Result<Claim, RedisFault> {
        let token = uuid::Uuid::new_v4().to_string();
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(self.keys.idempotency(scope, id))
            .arg(fingerprint)
            .arg(&token)
            .arg(self.claim_ttl.as_millis() as u64);
        let reply: Vec<redis::Value> = bounded(self.timeout, invocation.invoke_async(conn)).await?;
        let text = |i: usize| -> Option<String> {
            reply
                .get(i)
                .and_then(|v| redis::from_redis_value_ref(v).ok())
        };
        Ok(match text(0).as_deref() {
            Some("claimed") => Claim::Claimed(ClaimToken(token)),
            Some("done") => Claim::Done(text(1).unwrap_or_default()),
            Some("mismatch") => Claim::Mismatch,
            _ => {
                let ttl_ms: i64 = reply
                    .get(1)
                    .and_then(|v| redis::from_redis_value_ref(v).ok())
                    .unwrap_or(1_000);
                Claim::Pending(Duration::from_millis(ttl_ms.max(1) as u64))
            }
        })
    }

    /// Stores the reply of a finished request for the reply TTL.
    pub async fn complete<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        scope: &str,
        id: &Identifier,
        token: &ClaimToken,
        fingerprint: &str,
        reply: &str,
    ) -> Result<(), RedisFault> {
        let mut invocation = self.complete.prepare_invoke();
        invocation
            .key(self.keys.idempotency(scope, id))
            .arg(&token.0)
            .arg(fingerprint)
            .arg(reply)
            .arg(self.reply_ttl.as_millis() as u64);
        bounded(self.timeout, invocation.invoke_async::<i64>(conn)).await?;
        Ok(())
    }

    /// Drops a claim without caching anything, so the key may be tried again at once.
    pub async fn abandon<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        scope: &str,
        id: &Identifier,
        token: &ClaimToken,
    ) -> Result<(), RedisFault> {
        let mut invocation = self.abandon.prepare_invoke();
        invocation
            .key(self.keys.idempotency(scope, id))
            .arg(&token.0);
        bounded(self.timeout, invocation.invoke_async::<i64>(conn)).await?;
        Ok(())
    }
}
