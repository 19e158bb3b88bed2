//! Latency statistics in little memory: count, min and max always exact; every sample kept up
//! to [`EXACT`] of them, so that the percentiles of a short series are exact; beyond that a
//! log-linear histogram whose buckets are 1/32 of their value wide, so that a percentile is
//! off by at most [`MAX_ERROR`] of itself.
//!
//! A flow holds one of these per pair of consecutive hops and direction, and most flows are
//! short: one or two samples live in `min` and `max` and cost nothing on the heap. Durations
//! are kept as `u32` nanoseconds: a gap of more than 4.29 s between two hops of one packet
//! counts as 4.29 s.

/// Samples kept exactly per hop pair.
pub const EXACT: usize = 64;

/// Bits of a value below its leading one that pick its bucket: 32 buckets per power of two.
const SUB_BITS: u32 = 5;
/// Values below this have a bucket each.
const LINEAR: u32 = 2 << SUB_BITS;
/// Largest relative error of a percentile read from the histogram: half a bucket.
pub const MAX_ERROR: f64 = 1.0 / (2 << SUB_BITS) as f64;

/// Summary of a series of durations in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// Collects durations: 12 bytes, the samples beyond the second, and their count, in a
/// [`SampleStore`] that many series share.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    min: u32,
    max: u32,
    /// 0, 1 or 2: that many samples, in `min` and `max`. From the third sample on,
    /// [`IN_STORE`] more than the index of the series in the store, which counts them.
    state: u32,
}

/// The first `Latency::state` that names a series in the store.
const IN_STORE: u32 = 3;

/// The samples of a series that has more than two, and how many it has.
#[derive(Debug, Clone)]
struct Series {
    count: u32,
    samples: Samples,
}

#[derive(Debug, Clone)]
enum Samples {
    /// Every sample, up to [`EXACT`].
    Exact(Vec<u32>),
    /// (bucket, count), sorted by bucket.
    Histogram(Vec<(u16, u32)>),
}

/// The samples of every series that has more than two, each in a slot reused once its series
/// is released.
#[derive(Debug, Default)]
pub struct SampleStore {
    slots: Vec<Series>,
    free: Vec<u32>,
}

impl SampleStore {
    /// The `Latency::state` of a new series.
    fn insert(&mut self, series: Series) -> u32 {
        super::reuse_or_push(&mut self.slots, &mut self.free, series, "sample series")
            .checked_add(IN_STORE)
            .expect("fewer than 2^32 - 3 sample series")
    }

    fn get(&self, state: u32) -> &Series {
        &self.slots[(state - IN_STORE) as usize]
    }

    fn get_mut(&mut self, state: u32) -> &mut Series {
        &mut self.slots[(state - IN_STORE) as usize]
    }

    fn release(&mut self, state: u32) {
        let index = state - IN_STORE;
        self.slots[index as usize] = Series {
            count: 0,
            samples: Samples::Exact(Vec::new()),
        };
        self.free.push(index);
    }

    /// Series with samples here, for memory tests.
    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

impl Latency {
    pub fn record(&mut self, ns: u64, store: &mut SampleStore) {
        let ns = u32::try_from(ns).unwrap_or(u32::MAX);
        match self.state {
            0 => {
                (self.min, self.max, self.state) = (ns, ns, 1);
                return;
            }
            1 => self.state = 2,
            2 => {
                // The first two samples are the min and the max.
                let mut first = Vec::with_capacity(4);
                first.extend([self.min, self.max, ns]);
                self.state = store.insert(Series {
                    count: 3,
                    samples: Samples::Exact(first),
                });
            }
            state => {
                let series = store.get_mut(state);
                series.count = series.count.saturating_add(1);
                series.samples.add(ns);
            }
        }
        (self.min, self.max) = (self.min.min(ns), self.max.max(ns));
    }

    pub fn summary(&self, store: &SampleStore) -> Option<Summary> {
        let (min, max) = (u64::from(self.min), u64::from(self.max));
        let (count, p50, p99) = match self.state {
            0 => return None,
            1 => (1, min, min),
            // Nearest rank of two: the smaller is the median, the larger the 99th.
            2 => (2, min, max),
            state => {
                let series = store.get(state);
                (
                    series.count,
                    series.samples.percentile(50),
                    series.samples.percentile(99),
                )
            }
        };
        Some(Summary {
            count: u64::from(count),
            min_ns: min,
            // A bucket's middle may lie outside what was seen.
            p50_ns: p50.clamp(min, max),
            p99_ns: p99.clamp(min, max),
            max_ns: max,
        })
    }

    /// Gives the series' samples back to the store.
    pub fn release(self, store: &mut SampleStore) {
        if self.state >= IN_STORE {
            store.release(self.state);
        }
    }
}

impl Samples {
    fn add(&mut self, ns: u32) {
        match self {
            Samples::Exact(values) if values.len() < EXACT => values.push(ns),
            Samples::Exact(values) => {
                let mut histogram = Vec::new();
                for &value in values.iter() {
                    count(&mut histogram, value);
                }
                count(&mut histogram, ns);
                *self = Samples::Histogram(histogram);
            }
            Samples::Histogram(histogram) => count(histogram, ns),
        }
    }

    /// Nearest-rank percentile.
    fn percentile(&self, pct: u64) -> u64 {
        match self {
            Samples::Exact(values) => {
                let mut sorted = values.clone();
                sorted.sort_unstable();
                let rank = (sorted.len() as u64 * pct).div_ceil(100).max(1);
                u64::from(sorted[rank as usize - 1])
            }
            Samples::Histogram(histogram) => {
                let total: u64 = histogram.iter().map(|&(_, n)| u64::from(n)).sum();
                let rank = (total * pct).div_ceil(100).max(1);
                let mut seen = 0;
                for &(bucket, n) in histogram {
                    seen += u64::from(n);
                    if seen >= rank {
                        return middle(bucket);
                    }
                }
                histogram.last().map_or(0, |&(bucket, _)| middle(bucket))
            }
        }
    }
}

/// Adds one `value` to a sparse histogram.
fn count(histogram: &mut Vec<(u16, u32)>, value: u32) {
    let bucket = bucket(value);
    match histogram.binary_search_by_key(&bucket, |&(b, _)| b) {
        Ok(at) => histogram[at].1 = histogram[at].1.saturating_add(1),
        Err(at) => histogram.insert(at, (bucket, 1)),
    }
}

/// The bucket of `value`: values below [`LINEAR`] each have their own; above, each power of two
/// is cut into 32 buckets.
fn bucket(value: u32) -> u16 {
    if value < LINEAR {
        return value as u16;
    }
    let exponent = 31 - value.leading_zeros();
    let sub = (value >> (exponent - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (LINEAR + (exponent - SUB_BITS - 1) * (1 << SUB_BITS) + sub) as u16
}

/// The middle of a bucket's values.
fn middle(bucket: u16) -> u64 {
    let bucket = u32::from(bucket);
    if bucket < LINEAR {
        return u64::from(bucket);
    }
    let exponent = (bucket - LINEAR) / (1 << SUB_BITS) + SUB_BITS + 1;
    let sub = (bucket - LINEAR) % (1 << SUB_BITS);
    let low = (1u64 << exponent) + (u64::from(sub) << (exponent - SUB_BITS));
    let width = 1u64 << (exponent - SUB_BITS);
    low + width / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest-rank percentile of `values`, computed the plain way.
    fn exact(values: &[u64], pct: u64) -> u64 {
        let mut sorted = values.to_vec();
        sorted.sort_unstable();
        sorted[((sorted.len() as u64 * pct).div_ceil(100).max(1) - 1) as usize]
    }

    fn summary_of(values: &[u64]) -> Summary {
        let mut store = SampleStore::default();
        let mut latency = Latency::default();
        for &ns in values {
            latency.record(ns, &mut store);
        }
        latency.summary(&store).unwrap()
    }

    #[test]
    fn exact_for_small_series() {
        assert_eq!(
            summary_of(&[50, 10, 40, 20, 30]),
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
    fn exact_up_to_the_limit_of_exact_samples() {
        // Every length from 1 to EXACT, in an order that is neither sorted nor reversed.
        for len in 1..=EXACT as u64 {
            let values: Vec<u64> = (0..len).map(|i| (i * 7919) % 1013 + 500).collect();
            let summary = summary_of(&values);
            assert_eq!(summary.p50_ns, exact(&values, 50), "{len} samples");
            assert_eq!(summary.p99_ns, exact(&values, 99), "{len} samples");
            assert_eq!(summary.min_ns, *values.iter().min().unwrap());
            assert_eq!(summary.max_ns, *values.iter().max().unwrap());
        }
    }

    #[test]
    fn long_series_are_within_the_error_bound() {
        // Long tails and clusters, as hop gaps have them.
        let mut state = 0x1234_5678_u64;
        let values: Vec<u64> = (0..100_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let r = state >> 33;
                if r.is_multiple_of(100) {
                    50_000 + r % 900_000
                } else {
                    1_500 + r % 3_000
                }
            })
            .collect();
        let summary = summary_of(&values);
        for (got, pct) in [(summary.p50_ns, 50), (summary.p99_ns, 99)] {
            let want = exact(&values, pct);
            let error = got.abs_diff(want) as f64 / want as f64;
            assert!(error <= MAX_ERROR, "p{pct}: {got} for {want} ({error})");
        }
        assert_eq!(summary.count, 100_000);
    }

    #[test]
    fn buckets_are_ordered_and_hold_their_values() {
        let mut previous = 0;
        for value in (0..20)
            .chain((5..32).flat_map(|e| [1u32 << e, (1 << e) + 1, (1 << e) + (1 << (e - 1))]))
        {
            let bucket = bucket(value);
            assert!(bucket >= previous, "{value}");
            previous = bucket;
            let error = middle(bucket).abs_diff(u64::from(value)) as f64 / f64::from(value.max(1));
            assert!(error <= MAX_ERROR, "{value}: {} ({error})", middle(bucket));
        }
        assert_eq!(bucket(u32::MAX), bucket(u32::MAX - 1));
    }

    #[test]
    fn one_or_two_samples_are_kept_without_allocating() {
        let mut store = SampleStore::default();
        let mut latency = Latency::default();
        latency.record(1234, &mut store);
        assert_eq!(store.in_use(), 0);
        assert_eq!(
            latency.summary(&store),
            Some(Summary {
                count: 1,
                min_ns: 1234,
                p50_ns: 1234,
                p99_ns: 1234,
                max_ns: 1234
            })
        );
        latency.record(10, &mut store);
        assert_eq!(store.in_use(), 0);
        let summary = latency.summary(&store).unwrap();
        assert_eq!(
            (
                summary.min_ns,
                summary.p50_ns,
                summary.p99_ns,
                summary.max_ns
            ),
            (10, 10, 1234, 1234)
        );
    }

    #[test]
    fn long_gaps_saturate() {
        let summary = summary_of(&[10_000_000_000, 10_000_000_000]);
        assert_eq!(summary.max_ns, u64::from(u32::MAX));
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(Latency::default().summary(&SampleStore::default()), None);
    }

    #[test]
    fn released_samples_make_room_for_the_next_series() {
        let mut store = SampleStore::default();
        let mut first = Latency::default();
        for ns in [5, 1, 3] {
            first.record(ns, &mut store);
        }
        assert_eq!(store.in_use(), 1);
        first.release(&mut store);
        assert_eq!(store.in_use(), 0);
        let mut second = Latency::default();
        for ns in [30, 10, 20, 40] {
            second.record(ns, &mut store);
        }
        assert_eq!((store.in_use(), store.slots.len()), (1, 1));
        let summary = second.summary(&store).unwrap();
        assert_eq!((summary.count, summary.p50_ns, summary.p99_ns), (4, 20, 40));
    }

    #[test]
    fn a_series_is_12_bytes() {
        assert_eq!(std::mem::size_of::<Latency>(), 12);
    }
}
