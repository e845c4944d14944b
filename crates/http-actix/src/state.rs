//! [`AppState`]: what every handler and middleware can reach, built by
//! `startup` and read by the routes, so that they depend on it and not on
//! the composition root.

use std::sync::Arc;
use std::time::Instant;

use actix_web::HttpRequest;
use adapters_argon2::Argon2Hasher;
use domain::cache::ProfileCache;
use domain::idempotency::{IdempotentWrite, RenderResponse};
use domain::ports::{EventOutbox, HealthProbe};
use domain::service::UserService;

use crate::abuse::Limits;
use crate::auth::credentials::{AuthSettings, MetricsToken};
use crate::auth::failure_log::AuthFailureLog;
use crate::events::RelayState;
use crate::idempotency::{IdempotencyKeyHeader, IdempotencySettings, idempotent_write};
use crate::metrics::Metrics;

/// What every handler can reach.
pub struct AppState {
    /// The use cases.
    pub service: UserService,
    /// The database, for health probes.
    pub database: Arc<dyn HealthProbe>,
    /// The read replica, for health probes (`None` without `DATABASE_READ_URL`).
    pub replica: Option<Arc<dyn HealthProbe>>,
    /// The representation cache, for health probes.
    pub cache: Arc<dyn ProfileCache>,
    /// The change events, for the pull feed.
    pub events: Arc<dyn EventOutbox>,
    /// What the event relay last saw, for `/health`.
    pub relay: Arc<RelayState>,
    /// How callers authenticate.
    pub auth: AuthSettings,
    /// Abuse limits.
    pub limits: Limits,
    /// How idempotency records are kept and fingerprinted.
    pub idempotency: IdempotencySettings,
    /// Exported metrics.
    pub metrics: Arc<Metrics>,
    /// Reads the database pool's state for metrics.
    pub pool_status: Arc<dyn Fn() -> Option<deadpool::Status> + Send + Sync>,
    /// Reads what the read replica did, for metrics (`None` without one).
    pub replica_reads: Arc<dyn Fn() -> Option<adapters_postgres::ReplicaReads> + Send + Sync>,
    /// The password hasher, for its bulkhead's metrics.
    pub hasher: Argon2Hasher,
    /// When the service started, for `uptime_seconds`.
    pub started_at: Instant,
    /// Keeps the warnings about refused credentials to one per client address and reason
    /// per minute.
    pub auth_failure_log: AuthFailureLog,
    /// The bearer token `/metrics` requires, if any.
    pub metrics_token: Option<MetricsToken>,
    /// Requests and the writes they detached, which a stop waits for.
    pub in_flight: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("started_at", &self.started_at).finish_non_exhaustive()
    }
}

impl AppState {
    /// The idempotent write for a request with `key`, if it carries one: keys scoped to
    /// `caller_scope`, records kept `IDEMPOTENCY_TTL` from the service's clock (see
    /// [`idempotent_write`]).
    pub fn idempotent_write<T>(
        &self,
        key: IdempotencyKeyHeader,
        caller_scope: Option<String>,
        request: &HttpRequest,
        body: &[u8],
        render: RenderResponse<T>,
    ) -> Option<IdempotentWrite<T>> {
        idempotent_write(key, caller_scope, request, body, &self.idempotency, self.service.now(), render)
    }
}
