//! Percentiles of measured latencies.

/// The nearest-rank `p` quantile (0 < `p` ≤ 1) of `sorted`: the smallest value with at
/// least a share `p` of the values at or below it; `None` when there are none.
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_picks_the_smallest_value_covering_the_share() {
        let values: Vec<u32> = (1..=100).collect();
        assert_eq!(nearest_rank(&values, 0.50), Some(50));
        assert_eq!(nearest_rank(&values, 0.99), Some(99));
        assert_eq!(nearest_rank(&values, 1.0), Some(100));
        assert_eq!(nearest_rank(&[7u32], 0.5), Some(7));
        assert_eq!(nearest_rank::<u32>(&[], 0.5), None);
    }
}
