//! The live figures the operator's console charts: a recorder beside the Prometheus one that keeps,
//! for each tenant, the current value of the series the console shows (messages in and out,
//! connections, guest calls and their time, failures, isolation), and the listener's state.
//!
//! The console reads the same numbers `/metrics` serves, recorded once through the `metrics`
//! macros, without parsing the exposition text. It keeps only current totals: rates and percentiles
//! over time are the page's work. A tenant's entry lives while something holds one of its handles or
//! it has connections, so names taken from NOTIFY payloads cannot pile up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

use crate::metrics as m;

/// Upper bounds of the guest-call-time buckets, in microseconds: four a decade, 1 µs to 10 s
/// (a call past the last lands in one more bucket).
pub const CALL_TIME_BOUNDS_US: [f64; 29] = {
    let mut bounds = [0.0; 29];
    // 10^(k/4) for k in 0..4, scaled by each decade.
    const STEPS: [f64; 4] = [
        1.0,
        1.778_279_410_038_923,
        3.162_277_660_168_379_5,
        5.623_413_251_903_491,
    ];
    let mut k = 0;
    let mut decade = 1.0;
    while k < 29 {
        bounds[k] = decade * STEPS[k % 4];
        k += 1;
        if k % 4 == 0 {
            decade *= 10.0;
        }
    }
    bounds
};

/// The per-tenant series the console shows.
#[derive(Debug, Clone, Copy)]
enum Series {
    Notifications,
    Published,
    Dropped,
    Calls,
    Failures,
    QueueDropped,
    Throttled,
    Isolations,
    IsolationsEnded,
    Connections,
    CallTime,
}

impl Series {
    fn of(name: &str) -> Option<Series> {
        Some(match name {
            m::TENANT_NOTIFICATIONS => Series::Notifications,
            m::MESSAGES_PUBLISHED => Series::Published,
            m::MESSAGES_DROPPED => Series::Dropped,
            m::GUEST_CALLS => Series::Calls,
            m::GUEST_FAILURES => Series::Failures,
            m::TENANT_QUEUE_DROPS => Series::QueueDropped,
            m::GUEST_THROTTLED => Series::Throttled,
            m::GUEST_ISOLATIONS => Series::Isolations,
            m::GUEST_ISOLATIONS_ENDED => Series::IsolationsEnded,
            m::CONNECTIONS => Series::Connections,
            m::GUEST_CALL_SECONDS => Series::CallTime,
            _ => return None,
        })
    }
}

/// One tenant's current totals.
#[derive(Default)]
struct TenantFigures {
    notifications: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    queue_dropped: AtomicU64,
    throttled: AtomicU64,
    isolations: AtomicU64,
    isolations_ended: AtomicU64,
    /// Unix time in ms of the last isolation; 0 for never.
    last_isolated_ms: AtomicU64,
    /// A gauge: f64 bits, as `metrics` keeps gauges in atomics.
    connections: AtomicU64,
    call_time: [AtomicU64; CALL_TIME_BOUNDS_US.len() + 1],
}

impl TenantFigures {
    fn counter(&self, series: Series) -> Option<&AtomicU64> {
        Some(match series {
            Series::Notifications => &self.notifications,
            Series::Published => &self.published,
            Series::Dropped => &self.dropped,
            Series::Calls => &self.calls,
            Series::Failures => &self.failures,
            Series::QueueDropped => &self.queue_dropped,
            Series::Throttled => &self.throttled,
            Series::Isolations => &self.isolations,
            Series::IsolationsEnded => &self.isolations_ended,
            Series::Connections | Series::CallTime => return None,
        })
    }

    fn connections(&self) -> f64 {
        f64::from_bits(self.connections.load(Ordering::Relaxed))
    }
}

/// What a registered series of a tenant writes to.
struct Handle {
    tenant: Arc<TenantFigures>,
    series: Series,
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        if let Series::Isolations = self.series {
            self.tenant
                .last_isolated_ms
                .store(now_ms(), Ordering::Relaxed);
        }
        if let Some(counter) = self.tenant.counter(self.series) {
            CounterFn::increment(counter, value);
        }
    }

    fn absolute(&self, value: u64) {
        if let Some(counter) = self.tenant.counter(self.series) {
            CounterFn::absolute(counter, value);
        }
    }
}

impl GaugeFn for Handle {
    fn increment(&self, value: f64) {
        GaugeFn::increment(&self.tenant.connections, value);
    }

    fn decrement(&self, value: f64) {
        GaugeFn::decrement(&self.tenant.connections, value);
    }

    fn set(&self, value: f64) {
        GaugeFn::set(&self.tenant.connections, value);
    }
}

impl HistogramFn for Handle {
    fn record(&self, seconds: f64) {
        let us = seconds * 1e6;
        let bucket = CALL_TIME_BOUNDS_US.partition_point(|&bound| bound < us);
        self.tenant.call_time[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// Tenants kept at least, before entries nobody holds are pruned.
const PRUNE_FROM: usize = 1024;

struct Tenants {
    map: HashMap<String, Arc<TenantFigures>>,
    /// Size at which the next insert prunes entries nobody holds.
    prune_at: usize,
}

/// The figures, shared by the recorder and the console.
pub struct Figures {
    tenants: RwLock<Tenants>,
    listener_connected: Arc<AtomicU64>,
    listener_reconnects: Arc<AtomicU64>,
    notifications_received: Arc<AtomicU64>,
}

impl Default for Figures {
    fn default() -> Self {
        Figures {
            tenants: RwLock::new(Tenants {
                map: HashMap::new(),
                prune_at: PRUNE_FROM,
            }),
            listener_connected: Arc::default(),
            listener_reconnects: Arc::default(),
            notifications_received: Arc::default(),
        }
    }
}

/// One tenant in a [`Snapshot`].
#[derive(Debug, serde::Serialize)]
pub struct TenantSnapshot {
    pub tenant: String,
    /// Notifications for the tenant that reached its lane (before its guest).
    pub notifications: u64,
    /// Notifications delivered after its guest.
    pub published: u64,
    /// Dropped by its guest's verdict.
    pub dropped: u64,
    pub guest_calls: u64,
    pub guest_failures: u64,
    /// Dropped because its guest queue was full.
    pub queue_dropped: u64,
    pub throttled: u64,
    pub connections: u64,
    /// Isolated after repeated failures, for at most this many more ms (it ends early when the
    /// guest is replaced).
    pub isolated_for_ms: Option<u64>,
    /// Guest calls per bucket of [`CALL_TIME_BOUNDS_US`] (and one past the last).
    pub call_time: Vec<u64>,
}

/// The figures at one moment.
#[derive(Debug, serde::Serialize)]
pub struct Snapshot {
    pub now_ms: u64,
    /// Tenants with figures; `tenants` holds the busiest of them.
    pub tenant_count: usize,
    pub listener_connected: bool,
    pub listener_reconnects: u64,
    pub notifications_received: u64,
    pub call_time_bounds_us: &'static [f64],
    pub tenants: Vec<TenantSnapshot>,
}

impl Figures {
    /// Every tenant's totals now; `isolation` is how long an isolation lasts.
    /// The `limit` busiest tenants (by messages and connections) now; `isolation` is how long an
    /// isolation lasts.
    pub fn snapshot(&self, isolation: std::time::Duration, limit: usize) -> Snapshot {
        let now = now_ms();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // Held only to copy the entries: registering a new tenant's series never waits for the
        // figures to be read.
        let entries: Vec<(String, Arc<TenantFigures>)> = self
            .read()
            .map
            .iter()
            .map(|(tenant, f)| (tenant.clone(), f.clone()))
            .collect();
        let mut tenants: Vec<TenantSnapshot> = entries
            .into_iter()
            .map(|(tenant, f)| {
                let isolated = load(&f.isolations) > load(&f.isolations_ended);
                let until = load(&f.last_isolated_ms).saturating_add(isolation.as_millis() as u64);
                TenantSnapshot {
                    tenant,
                    notifications: load(&f.notifications),
                    published: load(&f.published),
                    dropped: load(&f.dropped),
                    guest_calls: load(&f.calls),
                    guest_failures: load(&f.failures),
                    queue_dropped: load(&f.queue_dropped),
                    throttled: load(&f.throttled),
                    connections: f.connections().max(0.0) as u64,
                    isolated_for_ms: isolated.then(|| until.saturating_sub(now)),
                    call_time: f.call_time.iter().map(load).collect(),
                }
            })
            .collect();
        let tenant_count = tenants.len();
        if tenants.len() > limit {
            let weight = |t: &TenantSnapshot| t.notifications + t.published + t.connections * 1000;
            tenants.sort_by_key(|t| std::cmp::Reverse(weight(t)));
            tenants.truncate(limit);
        }
        tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        Snapshot {
            tenant_count,
            now_ms: now,
            listener_connected: f64::from_bits(load(&self.listener_connected)) > 0.0,
            listener_reconnects: load(&self.listener_reconnects),
            notifications_received: load(&self.notifications_received),
            call_time_bounds_us: &CALL_TIME_BOUNDS_US,
            tenants,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tenants> {
        self.tenants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The entry of the tenant `key` is labelled with, for a series the console shows.
    fn handle(&self, key: &Key) -> Option<Arc<Handle>> {
        let series = Series::of(key.name())?;
        let tenant = key.labels().find(|l| l.key() == "tenant")?.value();
        if let Some(f) = self.read().map.get(tenant) {
            return Some(Arc::new(Handle {
                tenant: f.clone(),
                series,
            }));
        }
        let mut tenants = self
            .tenants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tenants.map.len() >= tenants.prune_at {
            // Only this map holds it and nobody is connected: no lane, session or count refers to
            // the tenant any more.
            tenants
                .map
                .retain(|_, f| Arc::strong_count(f) > 1 || f.connections() != 0.0);
            tenants.prune_at = PRUNE_FROM.max(tenants.map.len() * 2);
        }
        let f = tenants.map.entry(tenant.to_owned()).or_default().clone();
        Some(Arc::new(Handle { tenant: f, series }))
    }
}

/// [`Figures`] as a `metrics` recorder (installed beside the Prometheus one).
pub struct FiguresRecorder(pub Arc<Figures>);

impl Recorder for FiguresRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        match key.name() {
            m::LISTENER_RECONNECTS => Counter::from_arc(self.0.listener_reconnects.clone()),
            m::NOTIFICATIONS_RECEIVED => Counter::from_arc(self.0.notifications_received.clone()),
            _ => self
                .0
                .handle(key)
                .map_or_else(Counter::noop, Counter::from_arc),
        }
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        match key.name() {
            m::LISTENER_CONNECTED => Gauge::from_arc(self.0.listener_connected.clone()),
            _ => self.0.handle(key).map_or_else(Gauge::noop, Gauge::from_arc),
        }
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .handle(key)
            .map_or_else(Histogram::noop, Histogram::from_arc)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(name: &'static str, tenant: &str) -> Key {
        Key::from_parts(name, vec![metrics::Label::new("tenant", tenant.to_owned())])
    }

    const META: Metadata<'static> = Metadata::new("t", metrics::Level::INFO, None);

    #[test]
    fn tenant_series_add_up_per_tenant() {
        let figures = Arc::new(Figures::default());
        let recorder = FiguresRecorder(figures.clone());
        let published = recorder.register_counter(&key(m::MESSAGES_PUBLISHED, "a"), &META);
        published.increment(3);
        recorder
            .register_counter(&key(m::MESSAGES_PUBLISHED, "b"), &META)
            .increment(1);
        // Failures of every kind add up.
        for kind in ["trap", "timeout"] {
            let k = Key::from_parts(
                m::GUEST_FAILURES,
                vec![
                    metrics::Label::new("tenant", "a"),
                    metrics::Label::new("kind", kind),
                ],
            );
            recorder.register_counter(&k, &META).increment(2);
        }
        let connections = recorder.register_gauge(&key(m::CONNECTIONS, "a"), &META);
        connections.increment(2.0);
        connections.decrement(1.0);
        let time = recorder.register_histogram(&key(m::GUEST_CALL_SECONDS, "a"), &META);
        time.record(3e-6);
        time.record(3e-6);
        time.record(99.0);
        recorder
            .register_counter(&key(m::GUEST_ISOLATIONS, "a"), &META)
            .increment(1);
        // Not a console series: no entry.
        recorder
            .register_counter(&key(m::CLIENT_PUBLISHES, "c"), &META)
            .increment(1);

        let snap = figures.snapshot(Duration::from_secs(30), 100);
        let names: Vec<&str> = snap.tenants.iter().map(|t| t.tenant.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let a = &snap.tenants[0];
        assert_eq!((a.published, a.guest_failures, a.connections), (3, 4, 1));
        assert_eq!(a.call_time.iter().sum::<u64>(), 3);
        assert_eq!(a.call_time[2], 2, "3 µs is in the bucket up to 3.16 µs");
        assert_eq!(a.call_time[CALL_TIME_BOUNDS_US.len()], 1, "past 10 s");
        assert!(a.isolated_for_ms.is_some_and(|ms| ms > 29_000));
        assert_eq!(snap.tenants[1].published, 1);
        assert!(snap.tenants[1].isolated_for_ms.is_none());
    }

    #[test]
    fn tenants_nobody_holds_are_pruned() {
        let figures = Arc::new(Figures::default());
        let recorder = FiguresRecorder(figures.clone());
        let held = recorder.register_counter(&key(m::MESSAGES_PUBLISHED, "held"), &META);
        for i in 0..PRUNE_FROM * 4 {
            recorder
                .register_counter(&key(m::MESSAGES_PUBLISHED, &format!("t{i}")), &META)
                .increment(1);
        }
        held.increment(1);
        let snap = figures.snapshot(Duration::ZERO, usize::MAX);
        assert!(
            snap.tenants.len() <= PRUNE_FROM * 2,
            "{}",
            snap.tenants.len()
        );
        assert!(snap
            .tenants
            .iter()
            .any(|t| t.tenant == "held" && t.published == 1));
    }

    #[test]
    fn bounds_climb_four_a_decade() {
        assert_eq!(CALL_TIME_BOUNDS_US[0], 1.0);
        assert!((CALL_TIME_BOUNDS_US[4] - 10.0).abs() < 1e-9);
        assert!((CALL_TIME_BOUNDS_US[28] - 1e7).abs() < 1e-3);
    }
}
