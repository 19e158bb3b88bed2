//! The statistics behind the benchmark tables: medians with their spread, a distribution-free
//! confidence interval for a median, a nearest-rank percentile, and the small seeded random
//! number generator that orders the paired runs.

use serde_json::{Value, json};

/// The confidence level of every interval the benchmarks report.
pub const LEVEL: f64 = 0.95;

/// Median and spread of repeated measurements.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let sorted = sorted(values);
        Stat {
            median: median_of_sorted(&sorted),
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
        }
    }

    pub fn json(&self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The `p`-th percentile (0 < p <= 100) by the nearest-rank method; NaN when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let sorted = sorted(values);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A confidence interval for a median: the `lo_rank`-th and `hi_rank`-th smallest values
/// (1-based), and the probability that such an interval covers the true median.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    pub lo_rank: usize,
    pub hi_rank: usize,
    pub coverage: f64,
}

impl Interval {
    pub fn json(&self) -> Value {
        json!({"lo": self.lo, "hi": self.hi, "lo_rank": self.lo_rank, "hi_rank": self.hi_rank,
               "coverage": self.coverage})
    }
}

/// The distribution-free confidence interval for the median of `values` at `level` or more:
/// with `n` values sorted, `[x(k), x(n+1-k)]` misses the median only when at most `k-1`
/// values fall on one side of it, so its coverage is `1 - 2 P(B <= k-1)` with
/// `B ~ Binomial(n, 1/2)`. The largest `k` whose coverage is still at least `level` gives the
/// narrowest such interval. `None` when even `k = 1` (the whole range) covers less, as with
/// fewer than 6 values at 95%.
pub fn median_ci(values: &[f64], level: f64) -> Option<Interval> {
    let sorted = sorted(values);
    let (k, coverage) = median_ci_rank(sorted.len(), level)?;
    Some(Interval {
        lo: sorted[k - 1],
        hi: sorted[sorted.len() - k],
        lo_rank: k,
        hi_rank: sorted.len() + 1 - k,
        coverage,
    })
}

/// The rank `k` of [`median_ci`] for `n` values, with its coverage.
pub fn median_ci_rank(n: usize, level: f64) -> Option<(usize, f64)> {
    // P(B <= j) for j = 0, 1, ...: the probability mass 2^-n C(n, i) built up term by term
    // (the first term underflows only past n = 1074, far beyond any benchmark's repeats).
    let mut pmf = 0.5f64.powi(i32::try_from(n).ok()?);
    let mut cdf = 0.0;
    let mut best = None;
    for k in 1..=n / 2 {
        let j = k - 1;
        cdf += pmf;
        pmf *= (n - j) as f64 / (j + 1) as f64;
        let coverage = 1.0 - 2.0 * cdf;
        if coverage < level {
            break;
        }
        best = Some((k, coverage));
    }
    best
}

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators"):
/// plenty for shuffling the order of runs, and reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // One splitmix64 step spreads small seeds over all bits; the state must not be 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`); the modulo bias is below 2^-40 for the small `n` used here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_ranks_match_binomial_tables() {
        // Too few values: even the full range covers less than 95% (n = 5: 1 - 2/32).
        for n in 0..=5 {
            assert_eq!(median_ci_rank(n, LEVEL), None, "n = {n}");
        }
        let (k, coverage) = median_ci_rank(6, LEVEL).unwrap();
        assert_eq!(k, 1);
        assert!((coverage - (1.0 - 2.0 / 64.0)).abs() < 1e-12);
        // n = 10: x(2)..x(9), 1 - 2 * (1 + 10) / 1024.
        let (k, coverage) = median_ci_rank(10, LEVEL).unwrap();
        assert_eq!(k, 2);
        assert!((coverage - (1.0 - 22.0 / 1024.0)).abs() < 1e-12);
        // Textbook values: n = 20 -> x(6)..x(15) (95.86%), n = 100 -> x(40)..x(61) (96.48%).
        assert_eq!(median_ci_rank(20, LEVEL).unwrap().0, 6);
        assert_eq!(median_ci_rank(100, LEVEL).unwrap().0, 40);
        assert!((median_ci_rank(20, LEVEL).unwrap().1 - 0.9586).abs() < 1e-4);
    }

    #[test]
    fn ci_picks_order_statistics() {
        let values = [10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0];
        let ci = median_ci(&values, LEVEL).unwrap();
        assert_eq!((ci.lo, ci.hi), (2.0, 9.0));
        assert_eq!((ci.lo_rank, ci.hi_rank), (2, 9));
        assert!(median_ci(&values[..5], LEVEL).is_none());
        assert!(median_ci(&[], LEVEL).is_none());
    }

    #[test]
    fn medians_and_percentiles() {
        let s = Stat::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert_eq!(Stat::of(&[5.0, 1.0, 3.0]).median, 3.0);
        assert!(Stat::of(&[]).median.is_nan());
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 90.0), 9.0);
        assert_eq!(percentile(&values, 50.0), 5.0);
        assert_eq!(percentile(&values, 100.0), 10.0);
        assert!(percentile(&[], 90.0).is_nan());
    }

    #[test]
    fn rng_is_reproducible_and_shuffles() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let (x, y): (Vec<u64>, Vec<u64>) = (0..5).map(|_| (a.next_u64(), b.next_u64())).unzip();
        assert_eq!(x, y);
        assert_ne!(Rng::new(0).next_u64(), 0);
        let mut items: Vec<u32> = (0..20).collect();
        Rng::new(1).shuffle(&mut items);
        assert_ne!(items, (0..20).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..20).collect::<Vec<_>>());
        let heads = (0..1000).filter(|_| a.coin()).count();
        assert!((400..600).contains(&heads), "{heads} heads");
    }
}
