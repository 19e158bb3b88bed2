//! Latency statistics with bounded memory: exact up to [`RESERVOIR`] samples, then a uniform
//! reservoir sample for the percentiles (min, max and count stay exact).
//!
//! A flow holds one of these per pair of consecutive hops and direction, and most flows are
//! short, so the common cases cost nothing on the heap: a single sample lives in `min`, and
//! samples are kept as `u32` nanoseconds (gaps between two hops of one packet longer than
//! 4.29 s count as 4.29 s in the percentiles; min and max stay exact).

/// Samples kept per hop pair.
pub const RESERVOIR: usize = 256;

/// Summary of a series of durations in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// Collects durations.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    count: u64,
    min: u64,
    max: u64,
    /// Empty while `count` is 1: the one sample is `min`.
    samples: Vec<u32>,
}

impl Latency {
    pub fn record(&mut self, ns: u64) {
        self.count += 1;
        if self.count == 1 {
            (self.min, self.max) = (ns, ns);
            return;
        }
        if self.count == 2 {
            self.samples.push(saturate(self.min));
        }
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
        if self.samples.len() < RESERVOIR {
            self.samples.push(saturate(ns));
            return;
        }
        // Algorithm R: keep each new sample with probability RESERVOIR / count. The random
        // number comes from the count, so output is reproducible.
        let slot = splitmix64(self.count) % self.count;
        if let Some(kept) = self.samples.get_mut(slot as usize) {
            *kept = saturate(ns);
        }
    }

    pub fn summary(&self) -> Option<Summary> {
        match self.count {
            0 => None,
            1 => Some(Summary {
                count: 1,
                min_ns: self.min,
                p50_ns: self.min,
                p99_ns: self.min,
                max_ns: self.min,
            }),
            count => {
                let mut sorted = self.samples.clone();
                sorted.sort_unstable();
                Some(Summary {
                    count,
                    min_ns: self.min,
                    p50_ns: percentile(&sorted, 50),
                    p99_ns: percentile(&sorted, 99),
                    max_ns: self.max,
                })
            }
        }
    }
}

fn saturate(ns: u64) -> u32 {
    u32::try_from(ns).unwrap_or(u32::MAX)
}

/// A well-mixed 64-bit number from `x` (splitmix64's finalizer).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Nearest-rank percentile of sorted, non-empty `values`.
fn percentile(values: &[u32], pct: u64) -> u64 {
    let rank = (values.len() as u64 * pct).div_ceil(100).max(1);
    u64::from(values[rank as usize - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_for_small_series() {
        let mut latency = Latency::default();
        for ns in [50, 10, 40, 20, 30] {
            latency.record(ns);
        }
        let summary = latency.summary().unwrap();
        assert_eq!(
            summary,
            Summary {
                count: 5,
                min_ns: 10,
                p50_ns: 30,
                p99_ns: 50,
                max_ns: 50
            }
        );
    }

    #[test]
    fn bounded_for_long_series() {
        let mut latency = Latency::default();
        for ns in 1..=100_000u64 {
            latency.record(ns);
        }
        assert_eq!(latency.samples.len(), RESERVOIR);
        let summary = latency.summary().unwrap();
        assert_eq!(
            (summary.count, summary.min_ns, summary.max_ns),
            (100_000, 1, 100_000)
        );
        // A uniform sample of 1..=100000 has its median near 50000.
        assert!((40_000..60_000).contains(&summary.p50_ns), "{summary:?}");
        assert!(summary.p99_ns > 95_000, "{summary:?}");
    }

    #[test]
    fn one_sample_is_kept_without_allocating() {
        let mut latency = Latency::default();
        latency.record(1234);
        assert_eq!(latency.samples.capacity(), 0);
        assert_eq!(
            latency.summary(),
            Some(Summary {
                count: 1,
                min_ns: 1234,
                p50_ns: 1234,
                p99_ns: 1234,
                max_ns: 1234
            })
        );
        latency.record(10);
        let summary = latency.summary().unwrap();
        assert_eq!(
            (summary.min_ns, summary.p50_ns, summary.max_ns),
            (10, 10, 1234)
        );
    }

    #[test]
    fn long_gaps_saturate_only_in_percentiles() {
        let mut latency = Latency::default();
        let long = 10_000_000_000;
        latency.record(long);
        latency.record(long);
        let summary = latency.summary().unwrap();
        assert_eq!((summary.min_ns, summary.max_ns), (long, long));
        assert_eq!(summary.p50_ns, u64::from(u32::MAX));
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Latency::default().summary(), None);
    }
}
