//! Percentiles of measured latencies, rates from arrival times, and the spread of a
//! figure over repeated runs.

/// The `p` (0..=1) percentile of sorted values, nearest rank; `None` when empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// Microseconds to milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The steady rate of sorted arrival times (µs): arrivals between the 10th and the 90th
/// percentile over the time between them, without the pipeline's fill and drain.
pub fn steady_rate(sorted_arrivals_us: &[u64]) -> Option<f64> {
    let n = sorted_arrivals_us.len();
    let (a, b) = (
        sorted_arrivals_us.get(n / 10)?,
        sorted_arrivals_us.get(n * 9 / 10)?,
    );
    (b > a).then(|| (n * 9 / 10 - n / 10) as f64 / ((b - a) as f64 / 1e6))
}

/// Minimum, median and maximum of one figure over repeated runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

/// The spread of `values` (NaNs left out); `None` when there is none. The median of an
/// even count is the mean of the two middle values.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        min: v[0],
        median,
        max: v[n - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn steady_rate_ignores_fill_and_drain() {
        // 1,000 arrivals 1 ms apart: 1,000/s.
        let arrivals: Vec<u64> = (0..1000).map(|i| i * 1000).collect();
        let rate = steady_rate(&arrivals).unwrap_or(0.0);
        assert!((rate - 1000.0).abs() < 1.0, "{rate}");
        assert_eq!(steady_rate(&[]), None);
        assert_eq!(steady_rate(&[5, 5, 5]), None);
    }

    #[test]
    fn spread_of_runs() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            Some(Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            })
        );
        assert_eq!(spread(&[4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(spread(&[f64::NAN]), None);
    }
}
