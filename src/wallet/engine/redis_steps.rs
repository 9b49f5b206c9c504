//! A batch's two Redis steps, each one script call per hash slot (one call on a single
//! node): the start claims the batch's idempotency keys and takes its wallets' locks
//! (`lua/batch_begin.lua`), the end caches its replies or frees its claims and releases
//! the locks (`lua/batch_finish.lua`). On a cluster a wallet's claims and lock share its
//! hash tag, so each wallet costs one call per step; a hold placement's claim, tagged by
//! the hold, goes in a call of its own slot.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use tokio::time::Instant;

use crate::domain::Identifier;
use crate::idempotency::{Claim, ClaimRequest, ClaimToken, IdempotencyCache, Settle};
use crate::lock::{BatchLocks, WalletLock};
use crate::redis_support::{bounded, per_slot, unanswered, RedisFault, SlotAware};

static BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../../lua/lib/claim.lua"),
        include_str!("../../../lua/lib/acquire.lua"),
        include_str!("../../../lua/batch_begin.lua")
    ))
});

static FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("../../../lua/lib/settle.lua"),
        include_str!("../../../lua/lib/release.lua"),
        include_str!("../../../lua/batch_finish.lua")
    ))
});

/// What a batch's start found: one claim per key asked for, in order, the locks taken,
/// and the wallets held elsewhere with how long their leases still run.
pub(super) struct Begun {
    pub claims: Vec<Claim>,
    pub locks: BatchLocks,
    pub refused: Vec<(Identifier, Duration)>,
}

/// Claims `claims` and takes the locks of `wallets`, in one round trip.
pub(super) async fn begin<C: SlotAware>(
    cache: &IdempotencyCache,
    lock: &WalletLock,
    conn: &C,
    claims: &[ClaimRequest<'_>],
    wallets: &[Identifier],
) -> Result<Begun, RedisFault> {
    let started = Instant::now();
    let owner = WalletLock::new_owner();
    let tokens: Vec<ClaimToken> = claims.iter().map(|_| ClaimToken::new()).collect();
    let n = claims.len();
    let slot_key = |i: usize| match i.checked_sub(n) {
        None => cache.redis_key(claims[i].key),
        Some(w) => lock.lock_key(&wallets[w]),
    };
    let answers: Vec<(Vec<usize>, Vec<redis::Value>)> = bounded(
        lock.timeout(),
        per_slot(conn, &BEGIN, n + wallets.len(), slot_key, |call, items| {
            let claimed = items.iter().filter(|&&i| i < n).count();
            call.arg(cache.claim_ttl_ms())
                .arg(&owner)
                .arg(lock.lease_ms())
                .arg(claimed);
            // Items come in order: the claims, then the wallets.
            for &i in items {
                match i.checked_sub(n) {
                    None => cache.push_claim(call, &claims[i], &tokens[i]),
                    Some(w) => lock.push_acquire(call, &wallets[w]),
                }
            }
        }),
    )
    .await?;
    let mut claim_answers: Vec<Option<redis::Value>> = (0..n).map(|_| None).collect();
    let mut lock_answers: Vec<Option<(i64, u64)>> = vec![None; wallets.len()];
    for (items, values) in answers {
        let mut values = values.into_iter();
        let mut wallet_items = Vec::new();
        for i in items {
            match i.checked_sub(n) {
                None => claim_answers[i] = values.next(),
                Some(w) => wallet_items.push(w),
            }
        }
        for w in wallet_items {
            let (Some(token), Some(found)) = (values.next(), values.next()) else {
                return Err(unanswered());
            };
            let (Ok(token), Ok(found)) = (
                redis::from_redis_value::<i64>(token),
                redis::from_redis_value::<u64>(found),
            ) else {
                return Err(unanswered());
            };
            lock_answers[w] = Some((token, found));
        }
    }
    let claims = claim_answers
        .into_iter()
        .zip(tokens)
        .map(|(answer, token)| Ok(Claim::read(&answer.ok_or_else(unanswered)?, token)))
        .collect::<Result<Vec<_>, RedisFault>>()?;
    let (locks, refused) = BatchLocks::taken(owner, started, wallets, lock_answers)?;
    Ok(Begun {
        claims,
        locks,
        refused,
    })
}

/// Settles `settles` and releases `locks`, in one round trip. Returns the wallets
/// another process was waiting for.
pub(super) async fn finish<C: SlotAware>(
    cache: &IdempotencyCache,
    lock: &WalletLock,
    conn: &C,
    settles: &[Settle<'_>],
    locks: BatchLocks,
) -> Result<Vec<Identifier>, RedisFault> {
    let wallets: Vec<&Identifier> = locks.wallets().collect();
    let n = settles.len();
    if n + wallets.len() == 0 {
        return Ok(Vec::new());
    }
    let slot_key = |i: usize| match i.checked_sub(n) {
        None => cache.redis_key(settles[i].key),
        Some(w) => lock.lock_key(wallets[w]),
    };
    let channel = lock.release_channel();
    let answers: Vec<(Vec<usize>, Vec<i64>)> = bounded(
        lock.timeout(),
        per_slot(conn, &FINISH, n + wallets.len(), slot_key, |call, items| {
            let settled = items.iter().filter(|&&i| i < n).count();
            call.arg(cache.reply_ttl_ms())
                .arg(locks.owner())
                .arg(&channel)
                .arg(settled);
            for &i in items {
                match i.checked_sub(n) {
                    None => cache.push_settle(call, &settles[i]),
                    Some(w) => lock.push_release(call, wallets[w]),
                }
            }
        }),
    )
    .await?;
    let mut released: Vec<Option<i64>> = vec![None; wallets.len()];
    for (items, values) in answers {
        let wallet_items = items.into_iter().filter_map(|i| i.checked_sub(n));
        for (w, answer) in wallet_items.zip(values) {
            released[w] = Some(answer);
        }
    }
    drop(wallets);
    Ok(locks.released(released))
}
