//! How long to wait before trying again.

use std::time::Duration;

/// Exponential backoff with full jitter: a random delay up to `base × 2^(attempt-1)`,
/// capped at `cap`.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let ceiling = exp.min(cap).as_millis().max(1) as u64;
    Duration::from_millis(rand::Rng::random_range(&mut rand::rng(), 0..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (base, cap) = (Duration::from_millis(200), Duration::from_secs(5));
        for _ in 0..100 {
            assert!(backoff(1, base, cap) <= Duration::from_millis(200));
            assert!(backoff(3, base, cap) <= Duration::from_millis(800));
            assert!(backoff(30, base, cap) <= cap);
        }
    }
}
