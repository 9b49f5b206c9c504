//! Settings checked against each other before anything starts, so a deployment with a
//! setting that cannot work is refused with the variable's name instead of failing
//! later under load (a renewal loop that spins, a claim that expires mid-request).

use std::time::Duration;

use rust_decimal::Decimal;

use super::{ConnectionSettings, Settings};

/// Shortest lease: renewal runs every third of it, and a shorter one would spin.
const MIN_LEASE: Duration = Duration::from_millis(10);

/// How much longer than the request timeout an idempotency claim must live: the HTTP
/// backstop answers one second after the timeout, and the claim must still keep a
/// second request for the same key out until the first has finished.
const CLAIM_MARGIN: Duration = Duration::from_secs(1);

/// Largest points rate: points of the largest amount (10^12) still fit an `i64`.
const MAX_POINTS_RATE: u64 = 1_000_000;

/// The longest hold life a deployment may allow: funds held longer are not a hold.
const MAX_HOLD_TTL: Duration = Duration::from_secs(366 * 86_400);

/// The largest batch: its statements carry a few parameters per command, and MySQL
/// takes at most 65,535 placeholders in one statement.
const MAX_BATCH: usize = 1_000;

impl Settings {
    /// Refuses settings that cannot work together; the message names the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: String| {
            if !ok {
                problems.push(problem);
            }
        };
        let positive = |d: Duration| !d.is_zero();

        check(
            self.lock.lease >= MIN_LEASE,
            format!(
                "WALLET_LOCK_LEASE_MS must be at least {} (it is renewed every third of its length)",
                MIN_LEASE.as_millis()
            ),
        );
        check(
            positive(self.lock.wait),
            "WALLET_LOCK_WAIT_MS must be greater than 0".into(),
        );
        check(
            positive(self.lock.poll_interval),
            "WALLET_LOCK_POLL_MS must be greater than 0".into(),
        );
        check(
            (1..=MAX_BATCH).contains(&self.lock.batch_max),
            format!("WALLET_BATCH_MAX must be between 1 and {MAX_BATCH}"),
        );
        check(
            self.lock.breaker_threshold >= 1,
            "WALLET_BREAKER_THRESHOLD must be at least 1".into(),
        );
        check(
            positive(self.lock.breaker_probe_interval),
            "WALLET_BREAKER_PROBE_MS must be greater than 0".into(),
        );
        check(
            positive(self.api.request_timeout),
            "WALLET_REQUEST_TIMEOUT_MS must be greater than 0".into(),
        );
        check(
            self.idempotency.claim_ttl >= self.api.request_timeout + CLAIM_MARGIN,
            format!(
                "WALLET_IDEMPOTENCY_CLAIM_TTL_MS ({} ms) must be at least {} ms longer than \
                 WALLET_REQUEST_TIMEOUT_MS ({} ms): a claim that expires before its request \
                 ends lets a repeat of that request run beside it",
                self.idempotency.claim_ttl.as_millis(),
                CLAIM_MARGIN.as_millis(),
                self.api.request_timeout.as_millis()
            ),
        );
        check(
            self.idempotency.reply_ttl >= self.idempotency.claim_ttl,
            "WALLET_IDEMPOTENCY_TTL_SECS must be at least as long as WALLET_IDEMPOTENCY_CLAIM_TTL_MS"
                .into(),
        );
        check(
            self.points_rate >= Decimal::ZERO && self.points_rate <= Decimal::from(MAX_POINTS_RATE),
            format!("WALLET_POINTS_RATE must be between 0 and {MAX_POINTS_RATE}"),
        );
        check(
            positive(self.holds.default_ttl) && self.holds.default_ttl <= self.holds.max_ttl,
            "WALLET_HOLD_DEFAULT_TTL_SECS must be greater than 0 and at most WALLET_HOLD_MAX_TTL_SECS"
                .into(),
        );
        check(
            self.holds.max_ttl <= MAX_HOLD_TTL,
            format!(
                "WALLET_HOLD_MAX_TTL_SECS must be at most {} (a year)",
                MAX_HOLD_TTL.as_secs()
            ),
        );
        check(
            positive(self.holds.sweep_interval),
            "WALLET_HOLD_SWEEP_MS must be greater than 0".into(),
        );
        check(
            self.database.max_connections >= 1,
            "WALLET_DB_MAX_CONNECTIONS must be at least 1".into(),
        );
        check(
            self.redis.pool_size >= 1,
            "WALLET_REDIS_POOL_SIZE must be at least 1".into(),
        );
        check(
            positive(self.redis.command_timeout),
            "WALLET_REDIS_TIMEOUT_MS must be greater than 0".into(),
        );
        check(
            self.api.rate_per_second >= 1 && self.api.burst >= 1,
            "WALLET_RATE_LIMIT_PER_SECOND and WALLET_RATE_LIMIT_BURST must be at least 1".into(),
        );
        check(
            self.api.max_in_flight >= 1,
            "WALLET_MAX_IN_FLIGHT must be at least 1".into(),
        );
        let connections = &self.connections;
        check(
            positive(connections.header_timeout) && positive(connections.keep_alive_timeout),
            "WALLET_HTTP_HEADER_TIMEOUT_MS and WALLET_HTTP_KEEP_ALIVE_TIMEOUT_MS must be greater than 0"
                .into(),
        );
        let reserved = ConnectionSettings::reserved_descriptors(&self.database, &self.redis);
        check(
            connections.max_connections >= 1
                && (connections.max_connections as u64).saturating_add(reserved)
                    <= connections.open_files_limit,
            format!(
                "WALLET_HTTP_MAX_CONNECTIONS ({}) must be at least 1 and leave {reserved} of the \
                 open-files limit ({}) for MariaDB, Redis and Kafka: raise the limit \
                 (`ulimit -n`) or lower the cap",
                connections.max_connections, connections.open_files_limit
            ),
        );
        check(
            self.kafka.relay_batch >= 1,
            "WALLET_OUTBOX_BATCH must be at least 1".into(),
        );
        check(
            positive(self.kafka.relay_poll),
            "WALLET_OUTBOX_POLL_MS must be greater than 0".into(),
        );
        check(
            positive(self.kafka.fetch_wait) && self.kafka.fetch_wait <= Duration::from_secs(5),
            "WALLET_KAFKA_FETCH_WAIT_MS must be between 1 and 5000".into(),
        );
        check(
            positive(self.kafka.idle_look),
            "WALLET_KAFKA_IDLE_LOOK_MS must be greater than 0".into(),
        );
        check(
            positive(self.kafka.outbox_stall_after),
            "WALLET_OUTBOX_STALL_AFTER_MS must be greater than 0".into(),
        );
        check(
            self.kafka.partitions >= 1 && self.kafka.replication >= 1,
            "WALLET_KAFKA_PARTITIONS and WALLET_KAFKA_REPLICATION must be at least 1".into(),
        );
        check(
            self.redis.cluster_nodes.is_empty() || self.redis.sentinels.is_empty(),
            "WALLET_REDIS_CLUSTER_NODES and WALLET_REDIS_SENTINELS are two ways to reach \
             Redis: set one"
                .into(),
        );
        check(
            self.kafka.retry_attempts >= 1,
            "WALLET_CONSUMER_ATTEMPTS must be at least 1".into(),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid settings:\n  {}", problems.join("\n  "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let settings = Settings::from_lookup(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string())
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Why settings with `vars` are refused.
    fn refusal(vars: &[(&str, &str)]) -> String {
        settings_with(vars).unwrap_err().to_string()
    }

    #[test]
    fn the_defaults_are_valid() {
        settings_with(&[]).unwrap();
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        for (var, value) in [
            ("WALLET_LOCK_LEASE_MS", "0"),
            ("WALLET_IDEMPOTENCY_CLAIM_TTL_MS", "5000"),
            ("WALLET_POINTS_RATE", "-0.01"),
            ("WALLET_LOCK_POLL_MS", "0"),
            ("WALLET_OUTBOX_BATCH", "0"),
            ("WALLET_CONSUMER_ATTEMPTS", "0"),
            ("WALLET_IDEMPOTENCY_TTL_SECS", "1"),
            ("WALLET_HTTP_HEADER_TIMEOUT_MS", "0"),
            ("WALLET_HTTP_KEEP_ALIVE_TIMEOUT_MS", "0"),
            ("WALLET_HTTP_MAX_CONNECTIONS", "0"),
        ] {
            let error = refusal(&[(var, value)]);
            assert!(error.contains(var), "{var}={value}: {error}");
        }
    }

    #[test]
    fn a_cluster_and_sentinels_at_once_are_refused() {
        let error = refusal(&[
            ("WALLET_REDIS_CLUSTER_NODES", "redis://127.0.0.1:7000"),
            ("WALLET_REDIS_SENTINELS", "redis://127.0.0.1:26379"),
        ]);
        assert!(error.contains("WALLET_REDIS_SENTINELS"), "{error}");
        let sentinels = settings_with(&[(
            "WALLET_REDIS_SENTINELS",
            "redis://127.0.0.1:26379, redis://127.0.0.1:26380",
        )])
        .unwrap();
        assert_eq!(sentinels.redis.sentinels.len(), 2);
        assert_eq!(sentinels.redis.sentinel_master, "mymaster");
    }

    #[test]
    fn a_connection_cap_above_the_descriptor_limit_is_refused() {
        let limit = crate::configuration::open_files_limit();
        if limit == u64::MAX {
            return;
        }
        let error = refusal(&[("WALLET_HTTP_MAX_CONNECTIONS", &limit.to_string())]);
        assert!(error.contains("WALLET_HTTP_MAX_CONNECTIONS"), "{error}");
        assert!(error.contains("open-files limit"), "{error}");
        let default = settings_with(&[]).unwrap();
        let reserved = ConnectionSettings::reserved_descriptors(&default.database, &default.redis);
        let cap = default.connections.max_connections as u64;
        assert!(cap + reserved <= limit, "{:?}", default.connections);
    }

    #[test]
    fn a_claim_must_outlive_the_request() {
        let error = refusal(&[
            ("WALLET_REQUEST_TIMEOUT_MS", "30000"),
            ("WALLET_IDEMPOTENCY_CLAIM_TTL_MS", "20000"),
        ]);
        assert!(error.contains("WALLET_IDEMPOTENCY_CLAIM_TTL_MS"), "{error}");
        settings_with(&[
            ("WALLET_REQUEST_TIMEOUT_MS", "30000"),
            ("WALLET_IDEMPOTENCY_CLAIM_TTL_MS", "31000"),
        ])
        .unwrap();
    }
}
