//! The Redis idempotency cache: one Lua script claims a key or answers from it.
//!
//! The cache spares the database and the lock for repeats; it is not the last line.
//! A key lost with Redis (or past its TTL) is caught by the database's unique keys,
//! which replay the same answer.

use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use crate::domain::Identifier;
use crate::redis_support::{
    bounded, in_item_order, per_slot, unanswered, KeySpace, RedisFault, SlotAware,
};

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
    claim: Arc<Script>,
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
            claim: Arc::new(Script::new(include_str!("../../lua/idempotency_claim.lua"))),
            settle: Arc::new(Script::new(include_str!(
                "../../lua/idempotency_settle.lua"
            ))),
        }
    }

    /// Claims every key of a batch in one round trip (one call per node on a cluster);
    /// one [`Claim`] per request, in order.
    pub async fn claim_all<C: SlotAware>(
        &self,
        conn: &mut C,
        requests: &[ClaimRequest<'_>],
    ) -> Result<Vec<Claim>, RedisFault> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<String> = requests
            .iter()
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        let key = |i: usize| requests[i].key.in_space(&self.keys);
        let answers: Vec<(Vec<usize>, Vec<Vec<redis::Value>>)> = bounded(
            self.timeout,
            per_slot(conn, &self.claim, requests.len(), key, |call, items| {
                call.arg(self.claim_ttl.as_millis() as u64);
                for &i in items {
                    call.key(key(i))
                        .arg(requests[i].fingerprint)
                        .arg(&tokens[i]);
                }
            }),
        )
        .await?;
        in_item_order(requests.len(), answers)
            .into_iter()
            .zip(tokens)
            .map(|(reply, token)| Ok(parse_claim(&reply.ok_or_else(unanswered)?, token)))
            .collect()
    }

    /// True when a request holds the key's claim now (claimed, not yet answered).
    pub async fn is_pending<C: redis::aio::ConnectionLike + Send>(
        &self,
        conn: &mut C,
        key: CacheKey<'_>,
    ) -> Result<bool, RedisFault> {
        let state: Option<String> = bounded(
            self.timeout,
            redis::cmd("HGET")
                .arg(key.in_space(&self.keys))
                .arg("state")
                .query_async(conn),
        )
        .await?;
        Ok(state.as_deref() == Some("pending"))
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
        let key = |i: usize| claims[i].key.in_space(&self.keys);
        let build = |call: &mut redis::ScriptInvocation<'_>, items: &[usize]| {
            call.arg(self.reply_ttl.as_millis() as u64);
            for &i in items {
                let claim = &claims[i];
                call.key(key(i));
                match claim.how {
                    Settlement::Done { fingerprint, reply } => call
                        .arg("done")
                        .arg(&claim.token.0)
                        .arg(fingerprint)
                        .arg(reply),
                    Settlement::Abandon => call.arg("abandon").arg(&claim.token.0).arg("").arg(""),
                };
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

/// One answer of `lua/idempotency_claim.lua`.
fn parse_claim(reply: &[redis::Value], token: String) -> Claim {
    let text = |i: usize| -> Option<String> {
        reply
            .get(i)
            .and_then(|v| redis::from_redis_value_ref(v).ok())
    };
    match text(0).as_deref() {
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
    }
}
