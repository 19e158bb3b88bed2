//! Latency statistics with bounded memory: exact up to [`RESERVOIR`] samples, then a uniform
//! reservoir sample for the percentiles (min, max and count stay exact).

/// Samples kept per hop pair.
pub const RESERVOIR: usize = 1024;

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
    samples: Vec<u64>,
    /// xorshift state for reservoir replacement; deterministic so output is reproducible.
    rng: u64,
}

impl Latency {
    pub fn record(&mut self, ns: u64) {
        if self.count == 0 {
            self.min = ns;
            self.max = ns;
        }
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
        self.count += 1;
        if self.samples.len() < RESERVOIR {
            self.samples.push(ns);
            return;
        }
        // Algorithm R: keep each new sample with probability RESERVOIR / count.
        let slot = self.next_random() % self.count;
        if let Some(kept) = self.samples.get_mut(slot as usize) {
            *kept = ns;
        }
    }

    fn next_random(&mut self) -> u64 {
        if self.rng == 0 {
            self.rng = 0x9e37_79b9_7f4a_7c15;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    pub fn summary(&self) -> Option<Summary> {
        if self.count == 0 {
            return None;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        Some(Summary {
            count: self.count,
            min_ns: self.min,
            p50_ns: percentile(&sorted, 50),
            p99_ns: percentile(&sorted, 99),
            max_ns: self.max,
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty `values`.
fn percentile(values: &[u64], pct: u64) -> u64 {
    let rank = (values.len() as u64 * pct).div_ceil(100).max(1);
    values[rank as usize - 1]
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
    fn empty_has_no_summary() {
        assert_eq!(Latency::default().summary(), None);
    }
}
