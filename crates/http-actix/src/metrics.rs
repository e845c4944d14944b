//! Prometheus metrics at `/metrics` (OpenMetrics text): requests by route template, method
//! and status with latency histograms; cache lookups by result; database pool size and
//! waiters; the password-hash bulkhead.
//!
//! Every label value comes from a closed set, so that the number of series stays bounded
//! whatever clients send: routes by their template (`/api/v1/users/{id}`, or `unmatched`),
//! never the raw path; methods among the standard ones, or `other`.

use std::sync::Arc;
use std::time::Duration;

use adapters_postgres::ReplicaReads;
use async_trait::async_trait;
use domain::cache::{CacheBacklog, CacheHealth, CacheLookup, FillTicket, Invalidation, ProfileCache};
use domain::user::UserId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template, or `unmatched`.
    pub route: &'static str,
    /// The HTTP method (see [`method_label`]).
    pub method: &'static str,
    /// The status code.
    pub status: u16,
}

/// Labels of a request's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route template, or `unmatched`.
    pub route: &'static str,
    /// The HTTP method (see [`method_label`]).
    pub method: &'static str,
}

/// A method's label: the standard methods by name, any other (clients may send made-up
/// ones of any length) as `other`.
pub fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Labels of a cache operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit`, `miss`, `unavailable` (lookups), `fill`, `invalidate` (users invalidated), and
    /// of those `invalidate_deferred` (recorded in the ledger: Redis did not confirm in time)
    /// or `invalidate_unconfirmed` (neither: the change was not acknowledged).
    pub result: &'static str,
}

/// Labels of a user read on the read replica.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// `served` (loaded from the replica), `behind` (sent to the primary: the replica had
    /// not applied the user's floor) or `unavailable` (sent to the primary: the replica failed).
    pub outcome: &'static str,
}

/// Every metric the service exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    cache: Family<CacheLabels, Counter>,
    pool_size: Gauge,
    pool_available: Gauge,
    pool_waiting: Gauge,
    replica_reads: Family<ReplicaLabels, Counter>,
    /// Held while the replica's counts are brought up to the store's (two scrapes at once
    /// would add the same reads twice).
    replica_sync: std::sync::Mutex<()>,
    hashes_running: Gauge,
    pending_invalidations: Gauge,
    scheduled_follow_ups: Gauge,
    deferred_invalidations: Gauge,
    near_entries: Gauge,
    near_bytes: Gauge,
    events_pending: Gauge,
    events_oldest_pending_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    events_published: Counter,
    events_publish_failures: Family<FailureLabels, Counter>,
    events_confirm_latency: Histogram,
}

/// Labels of a failed publication of events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `unreachable`, `refused` or `unconfirmed`.
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("user_service");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by route template, method and status", requests.clone());
        // 0.25 ms to about 4 s.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
        });
        registry.register("http_request_duration_seconds", "HTTP request latency", latency.clone());
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register("cache_operations", "Cache lookups by result, fills and invalidations", cache.clone());
        let pool_size = Gauge::default();
        registry.register("db_pool_connections", "Open database connections", pool_size.clone());
        let pool_available = Gauge::default();
        registry.register("db_pool_available", "Idle database connections", pool_available.clone());
        let pool_waiting = Gauge::default();
        registry.register("db_pool_waiting", "Requests waiting for a database connection", pool_waiting.clone());
        let replica_reads = Family::<ReplicaLabels, Counter>::default();
        registry.register(
            "replica_reads",
            "Users whose cache miss asked for the read replica (DATABASE_READ_URL), by outcome",
            replica_reads.clone(),
        );
        let hashes_running = Gauge::default();
        registry.register("password_hashes_running", "Password hashes computing now", hashes_running.clone());
        let pending_invalidations = Gauge::default();
        registry.register(
            "cache_pending_invalidations",
            "Users whose cache invalidation Redis has not confirmed yet",
            pending_invalidations.clone(),
        );
        let scheduled_follow_ups = Gauge::default();
        registry.register(
            "cache_scheduled_follow_ups",
            "Follow-up deletions of downstream copies not yet done",
            scheduled_follow_ups.clone(),
        );
        let deferred_invalidations = Gauge::default();
        registry.register(
            "cache_deferred_invalidations",
            "Users listed in the cache invalidation ledger at its last read: their entries are not served",
            deferred_invalidations.clone(),
        );
        let near_entries = Gauge::default();
        registry.register(
            "cache_near_entries",
            "Users kept in process in front of Redis (the near-cache), served after a shared freshness check",
            near_entries.clone(),
        );
        let near_bytes = Gauge::default();
        registry.register(
            "cache_near_bytes",
            "Bytes the near-cache's entries weigh (payloads and a fixed overhead each); bounded by NEAR_CACHE_MAX_BYTES",
            near_bytes.clone(),
        );
        let events_pending = Gauge::default();
        registry.register(
            "events_outbox_pending",
            "Change events recorded but not yet published (or, without a broker, not yet in the feed); counted up to 100000",
            events_pending.clone(),
        );
        let events_oldest_pending_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "events_outbox_oldest_pending_seconds",
            "Age of the oldest change event not yet published",
            events_oldest_pending_seconds.clone(),
        );
        let events_published = Counter::default();
        registry.register(
            "events_published",
            "Change events published and confirmed by the broker",
            events_published.clone(),
        );
        let events_publish_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "events_publish_failures",
            "Failed publications of change events by reason",
            events_publish_failures.clone(),
        );
        let events_confirm_latency = Histogram::new(exponential_buckets(0.000_5, 2.0, 14));
        registry.register(
            "events_confirm_duration_seconds",
            "From the first publish of a batch of events to the broker's last confirm",
            events_confirm_latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            cache,
            pool_size,
            pool_available,
            pool_waiting,
            replica_reads,
            replica_sync: std::sync::Mutex::new(()),
            hashes_running,
            pending_invalidations,
            scheduled_follow_ups,
            deferred_invalidations,
            near_entries,
            near_bytes,
            events_pending,
            events_oldest_pending_seconds,
            events_published,
            events_publish_failures,
            events_confirm_latency,
        }
    }

    /// A batch of `count` events published and confirmed in `latency`.
    pub fn observe_publication(&self, count: usize, latency: Duration) {
        self.events_published.inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        self.events_confirm_latency.observe(latency.as_secs_f64());
    }

    /// A failed publication.
    pub fn count_publish_failure(&self, reason: &'static str) {
        self.events_publish_failures.get_or_create(&FailureLabels { reason }).inc();
    }

    /// The outbox's backlog measured at `now`.
    pub fn set_event_backlog(&self, backlog: domain::event::Backlog, now: time::OffsetDateTime) {
        self.events_pending.set(i64::try_from(backlog.pending).unwrap_or(i64::MAX));
        let age = backlog.oldest.map_or(0.0, |oldest| (now - oldest).as_seconds_f64().max(0.0));
        self.events_oldest_pending_seconds.set(age);
    }

    /// Records a finished request: `route` is a route template or `unmatched`.
    pub fn observe_request(
        &self,
        route: &'static str,
        method: &actix_web::http::Method,
        status: u16,
        latency: Duration,
    ) {
        let method = method_label(method);
        self.requests.get_or_create(&RequestLabels { route, method, status }).inc();
        self.latency.get_or_create(&RouteLabels { route, method }).observe(latency.as_secs_f64());
    }

    fn count_cache(&self, result: &'static str, by: u64) {
        self.cache.get_or_create(&CacheLabels { result }).inc_by(by);
    }

    /// Renders every metric, after reading the gauges from their sources.
    pub fn render(
        &self,
        pool: Option<deadpool::Status>,
        replica: Option<ReplicaReads>,
        hashes_running: usize,
        backlog: CacheBacklog,
    ) -> String {
        if let Some(reads) = replica {
            let _counting = self.replica_sync.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (outcome, count) in
                [("served", reads.served), ("behind", reads.behind), ("unavailable", reads.unavailable)]
            {
                let counter = self.replica_reads.get_or_create(&ReplicaLabels { outcome });
                counter.inc_by(count.saturating_sub(counter.get()));
            }
        }
        if let Some(status) = pool {
            self.pool_size.set(i64::try_from(status.size).unwrap_or(i64::MAX));
            self.pool_available.set(i64::try_from(status.available).unwrap_or(i64::MAX));
            self.pool_waiting.set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
        }
        self.hashes_running.set(i64::try_from(hashes_running).unwrap_or(i64::MAX));
        self.pending_invalidations.set(i64::try_from(backlog.pending_invalidations).unwrap_or(i64::MAX));
        self.scheduled_follow_ups.set(i64::try_from(backlog.scheduled_follow_ups).unwrap_or(i64::MAX));
        self.deferred_invalidations.set(i64::try_from(backlog.deferred_invalidations).unwrap_or(i64::MAX));
        self.near_entries.set(i64::try_from(backlog.near_entries).unwrap_or(i64::MAX));
        self.near_bytes.set(i64::try_from(backlog.near_bytes).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A [`ProfileCache`] that counts what the cache it wraps does.
pub struct MeteredCache {
    inner: Arc<dyn ProfileCache>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MeteredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredCache").finish_non_exhaustive()
    }
}

impl MeteredCache {
    /// Counts the operations of `inner` in `metrics`.
    pub fn new(inner: Arc<dyn ProfileCache>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn count_lookup(&self, lookup: &CacheLookup) {
        let result = match lookup {
            CacheLookup::Hit(_) => "hit",
            CacheLookup::Miss(_) => "miss",
            CacheLookup::Unavailable => "unavailable",
        };
        self.metrics.count_cache(result, 1);
    }
}

#[async_trait]
impl ProfileCache for MeteredCache {
    async fn lookup(&self, id: UserId) -> CacheLookup {
        let lookup = self.inner.lookup(id).await;
        self.count_lookup(&lookup);
        lookup
    }

    async fn lookup_many(&self, ids: &[UserId]) -> Vec<CacheLookup> {
        let lookups = self.inner.lookup_many(ids).await;
        lookups.iter().for_each(|lookup| self.count_lookup(lookup));
        lookups
    }

    async fn fill(&self, id: UserId, ticket: FillTicket, bytes: Vec<u8>) {
        self.metrics.count_cache("fill", 1);
        self.inner.fill(id, ticket, bytes).await;
    }

    async fn invalidate(&self, ids: &[UserId]) -> Invalidation {
        let users = u64::try_from(ids.len()).unwrap_or(u64::MAX);
        self.metrics.count_cache("invalidate", users);
        let invalidation = self.inner.invalidate(ids).await;
        match invalidation {
            Invalidation::Confirmed => {}
            Invalidation::Deferred => self.metrics.count_cache("invalidate_deferred", users),
            Invalidation::Unconfirmed => self.metrics.count_cache("invalidate_unconfirmed", users),
        }
        invalidation
    }

    async fn health(&self) -> CacheHealth {
        self.inner.health().await
    }

    fn backlog(&self) -> CacheBacklog {
        self.inner.backlog()
    }

    async fn finish_pending(&self) {
        self.inner.finish_pending().await;
    }
}
