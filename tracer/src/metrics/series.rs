//! The series of the labelled families: when each was last observed, and the removal of those
//! idle for the TTL (`--series-ttl`), which gives their room back to the cap (`--max-series`).
//!
//! A series is a metric wrapped in [`Seen`], which holds the time of its last observation.
//! Observing an existing series costs the family's lookup, as it did without expiry, and one
//! atomic swap: no allocation, no lock but the family's. Each [`Tracked`] family also lists its
//! label sets, for the sweep to go through; the list is locked only to create a series or to
//! sweep, never to observe an existing one.
//!
//! A sweep and an observation of the same series never lose the observation: the sweep marks
//! the series [`EXPIRED`] with a compare-and-swap from the last observation's time before it
//! removes it, so that either the observer's swap came first (and the series stays) or the
//! observer sees the mark and creates the series anew once the sweep is done.

use std::{
    fmt,
    hash::Hash,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder},
    metrics::{MetricType, TypedMetric, family::Family},
};

/// Where [`Metrics`](super::Metrics) reads the time of observations and sweeps: a clock that
/// never goes back. The monotonic clock, or one set by hand in tests.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The time since an origin of the clock's choosing.
    fn now(&self) -> Duration;
}

/// The monotonic clock, from when it was made.
#[derive(Debug)]
pub struct Monotonic(Instant);

impl Default for Monotonic {
    fn default() -> Self {
        Monotonic(Instant::now())
    }
}

impl Clock for Monotonic {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// What a sweep stores over the time of a series' last observation as it removes the series.
const EXPIRED: u64 = u64::MAX;

/// A metric and the time of its last observation, in nanoseconds on the [`Clock`].
#[derive(Debug, Default)]
pub struct Seen<M> {
    metric: M,
    at: AtomicU64,
}

impl<M> Seen<M> {
    /// `metric`, not observed yet (the family that makes it sets the time at once).
    pub fn new(metric: M) -> Self {
        Seen {
            metric,
            at: AtomicU64::new(0),
        }
    }
}

impl<M: TypedMetric> TypedMetric for Seen<M> {
    const TYPE: MetricType = M::TYPE;
}

impl<M: EncodeMetric> EncodeMetric for Seen<M> {
    fn encode(&self, encoder: MetricEncoder) -> fmt::Result {
        self.metric.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.metric.metric_type()
    }
}

/// The family as the registry holds it.
pub type SeenFamily<S, M> = Family<S, Seen<M>, fn() -> Seen<M>>;

/// A family whose series are capped and expire.
#[derive(Debug)]
pub struct Tracked<S, M> {
    family: SeenFamily<S, M>,
    /// The family's label sets, each with whether it is an overflow series (which does not
    /// count against the cap). Held to create or remove a series, so that the two never cross.
    index: Mutex<Vec<(S, bool)>>,
}

impl<S: Clone + Hash + Eq, M> Tracked<S, M> {
    /// An empty family whose series `constructor` makes.
    pub fn new(constructor: fn() -> Seen<M>) -> Self {
        Tracked {
            family: Family::new_with_constructor(constructor),
            index: Mutex::new(Vec::new()),
        }
    }

    /// The family, to register.
    pub fn family(&self) -> SeenFamily<S, M> {
        self.family.clone()
    }

    /// Calls `with` on the metric of `labels`, observed at `now` (nanoseconds on the clock). A
    /// label set without a series gets one if `admit` says there is room (and counts it), and
    /// goes to the overflow series, `overflow()`, otherwise.
    pub fn observe(
        &self,
        now: u64,
        labels: S,
        overflow: impl FnOnce() -> S,
        admit: impl FnOnce() -> bool,
        with: impl FnOnce(&M),
    ) {
        if let Some(series) = self.family.get(&labels)
            && series.at.swap(now, Ordering::Relaxed) != EXPIRED
        {
            with(&series.metric);
            return;
        }
        let mut index = lock(&self.index);
        // Under the lock, series are created only here and removed by no one: a series being
        // removed when the lookup above ran is gone now.
        let labels = if self.family.get(&labels).is_some() {
            labels
        } else if admit() {
            index.push((labels.clone(), false));
            labels
        } else {
            let overflow = overflow();
            if self.family.get(&overflow).is_none() {
                index.push((overflow.clone(), true));
            }
            overflow
        };
        let series = self.family.get_or_create(&labels);
        series.at.store(now, Ordering::Relaxed);
        with(&series.metric);
    }

    /// Removes the series last observed `ttl` or longer before `now`, and calls `release` with
    /// the number of them that counted against the cap, before any new series can be made.
    pub fn expire(&self, now: u64, ttl: u64, release: impl FnOnce(usize)) {
        let mut index = lock(&self.index);
        let mut released = 0;
        index.retain(|(labels, overflow)| {
            let expired = self.family.get(labels).is_none_or(|series| {
                let at = series.at.load(Ordering::Relaxed);
                now.saturating_sub(at) >= ttl
                    && series
                        .at
                        .compare_exchange(at, EXPIRED, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
            });
            if expired {
                self.family.remove(labels);
                released += usize::from(!overflow);
            }
            !expired
        });
        release(released);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
