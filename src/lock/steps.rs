//! A batch's two Redis steps, each one script call per hash slot (one call on a single
//! node; on a cluster, one pipeline per node, [`per_slot`]): the start claims the
//! batch's idempotency keys and takes its wallets' locks (`lua/batch_begin.lua`), the
//! end caches its replies or frees its claims and releases the locks
//! (`lua/batch_finish.lua`). On a cluster a wallet's claims and lock share its hash tag,
//! so each wallet costs one call per step; a hold placement's claim, tagged by the hold,
//! goes in a call of its own slot. Without claims, the same calls only take and release
//! locks ([`WalletLock::acquire_batch`], [`WalletLock::release_batch`]).

use std::time::Duration;

use tokio::time::Instant;

use super::{BatchLocks, Held, WalletLock};
use crate::domain::Identifier;
use crate::idempotency::{Claim, ClaimRequest, ClaimToken, IdempotencyCache, Settle};
use crate::redis_support::{bounded, per_slot, unanswered, RedisFault, SlotAware};
use crate::telemetry::metrics;

/// What a batch's start found: one claim per key asked for, in order, the locks taken,
/// and the wallets held elsewhere with how long their leases still run.
pub struct Begun {
    pub claims: Vec<Claim>,
    pub locks: BatchLocks,
    pub refused: Vec<(Identifier, Duration)>,
}

/// Keys to claim or settle in a batch's step, and the cache they belong to.
pub type InCache<'a, T> = Option<(&'a IdempotencyCache, &'a [T])>;

impl WalletLock {
    /// Claims `claims` and takes the locks of `wallets`, in one round trip (one call per
    /// node on a cluster), the locks under one owner token. A wallet held elsewhere is
    /// left out and never holds up the others.
    pub async fn begin_batch<C: SlotAware>(
        &self,
        conn: &C,
        claims: InCache<'_, ClaimRequest<'_>>,
        wallets: &[Identifier],
    ) -> Result<Begun, RedisFault> {
        let started = Instant::now();
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let (cache, claims) = claims.map_or((None, &[][..]), |(c, k)| (Some(c), k));
        let tokens: Vec<ClaimToken> = claims.iter().map(|_| ClaimToken::new()).collect();
        let n = claims.len();
        // Items: the claims (only with a cache), then the wallets.
        let slot_key = |i: usize| match cache.filter(|_| i < n) {
            Some(cache) => cache.redis_key(claims[i].key),
            None => self.keys.lock(&wallets[i - n]),
        };
        let answers: Vec<(Vec<usize>, Vec<redis::Value>)> = bounded(
            self.timeout,
            per_slot(
                conn,
                &self.scripts.begin,
                n + wallets.len(),
                slot_key,
                |call, items| {
                    let claimed = items.iter().filter(|&&i| i < n).count();
                    call.arg(cache.map_or(0, IdempotencyCache::claim_ttl_ms))
                        .arg(&owner)
                        .arg(self.settings.lease.as_millis() as u64)
                        .arg(claimed);
                    // A call's items come in order: its claims, then its wallets.
                    for &i in items {
                        match cache.filter(|_| i < n) {
                            Some(cache) => cache.push_claim(call, &claims[i], &tokens[i]),
                            None => {
                                let user_id = &wallets[i - n];
                                call.key(self.keys.lock(user_id))
                                    .key(self.keys.fence(user_id))
                                    .key(self.keys.contended(user_id));
                            }
                        }
                    }
                },
            ),
        )
        .await?;
        let mut claim_answers: Vec<Option<redis::Value>> = (0..n).map(|_| None).collect();
        let mut lock_answers: Vec<Option<(i64, String)>> = vec![None; wallets.len()];
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
                    redis::from_redis_value::<String>(found),
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

    /// Settles `settles` and releases `locks`, in one round trip (one call per node on a
    /// cluster). Returns the wallets another process was waiting for.
    pub async fn finish_batch<C: SlotAware>(
        &self,
        conn: &C,
        settles: InCache<'_, Settle<'_>>,
        locks: BatchLocks,
    ) -> Result<Vec<Identifier>, RedisFault> {
        let (cache, settles) = settles.map_or((None, &[][..]), |(c, s)| (Some(c), s));
        let wallets: Vec<&Identifier> = locks.held.iter().map(|held| &held.user_id).collect();
        let n = settles.len();
        if n + wallets.len() == 0 {
            return Ok(Vec::new());
        }
        // Items: the settles (only with a cache), then the wallets.
        let slot_key = |i: usize| match cache.filter(|_| i < n) {
            Some(cache) => cache.redis_key(settles[i].key),
            None => self.keys.lock(wallets[i - n]),
        };
        let channel = self.keys.release_channel();
        let answers: Vec<(Vec<usize>, Vec<i64>)> = bounded(
            self.timeout,
            per_slot(
                conn,
                &self.scripts.finish,
                n + wallets.len(),
                slot_key,
                |call, items| {
                    let settled = items.iter().filter(|&&i| i < n).count();
                    call.arg(cache.map_or(0, IdempotencyCache::reply_ttl_ms))
                        .arg(&locks.owner)
                        .arg(&channel)
                        .arg(settled);
                    for &i in items {
                        match cache.filter(|_| i < n) {
                            Some(cache) => cache.push_settle(call, &settles[i]),
                            None => {
                                let user_id = wallets[i - n];
                                let held = &locks.held[i - n];
                                let left = held
                                    .leave
                                    .as_ref()
                                    .map_or(String::new(), |note| format!("{}|{note}", held.fence));
                                call.key(self.keys.lock(user_id))
                                    .key(self.keys.contended(user_id))
                                    .key(self.keys.fence(user_id))
                                    .arg(user_id.as_str())
                                    .arg(left);
                            }
                        }
                    }
                },
            ),
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

    /// Tries to take the locks of a batch's wallets: [`WalletLock::begin_batch`] without
    /// claims.
    pub async fn acquire_batch<C: SlotAware>(
        &self,
        conn: &C,
        wallets: &[Identifier],
    ) -> Result<(BatchLocks, Vec<(Identifier, Duration)>), RedisFault> {
        let begun = self.begin_batch(conn, None, wallets).await?;
        Ok((begun.locks, begun.refused))
    }

    /// Releases every lock of a batch: [`WalletLock::finish_batch`] without claims.
    /// Returns the wallets another process was waiting for.
    pub async fn release_batch<C: SlotAware>(
        &self,
        conn: &C,
        locks: BatchLocks,
    ) -> Result<Vec<Identifier>, RedisFault> {
        self.finish_batch(conn, None, locks).await
    }
}

impl BatchLocks {
    /// The locks a batch took, from the answers of `acquire` (`lua/lib/acquire.lua`) for
    /// each of `wallets`, in order; and the wallets held elsewhere, with how long their
    /// leases still run.
    fn taken(
        owner: String,
        started: Instant,
        wallets: &[Identifier],
        answers: Vec<Option<(i64, String)>>,
    ) -> Result<(Self, Vec<(Identifier, Duration)>), RedisFault> {
        let mut locks = BatchLocks {
            owner,
            taken_at: started,
            held: Vec::with_capacity(wallets.len()),
        };
        let mut refused = Vec::new();
        for (user_id, answer) in wallets.iter().zip(answers) {
            let (answer, found) = answer.ok_or_else(unanswered)?;
            if answer > 0 {
                metrics::lock_acquired("acquired", started.elapsed());
                locks.held.push(Held {
                    user_id: user_id.clone(),
                    fence: answer as u64,
                    found: found.split_once('|').map(|(_, note)| note.to_owned()),
                    leave: None,
                });
            } else {
                metrics::lock_acquired("busy", started.elapsed());
                refused.push((
                    user_id.clone(),
                    Duration::from_millis(answer.unsigned_abs()),
                ));
            }
        }
        Ok((locks, refused))
    }

    /// Ends the locks given the answers of `release` (`lua/lib/release.lua`) for each
    /// wallet, in order: the wallets another process was waiting for.
    fn released(self, answers: Vec<Option<i64>>) -> Vec<Identifier> {
        let lost = answers.iter().filter(|answer| **answer == Some(0)).count();
        if lost > 0 {
            tracing::warn!(lost, "batch lock leases had expired before release");
        }
        self.held
            .into_iter()
            .zip(answers)
            .filter(|(_, answer)| *answer == Some(2))
            .map(|(held, _)| held.user_id)
            .collect()
    }
}
