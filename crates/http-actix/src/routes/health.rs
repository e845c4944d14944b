//! Health: `/health` (dependencies with latency), `/health/live` (the process answers) and
//! `/health/ready` (the database answers).

use std::time::{Duration, Instant};

use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Data;
use actix_web::{HttpRequest, HttpResponse, Responder};
use apistos::api_operation;
use schemars::JsonSchema;
use serde::Serialize;

use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::events::EventsStatus;
use crate::state::AppState;
use domain::cache::CacheHealth;
use domain::ports::HealthProbe;

/// How long a dependency may take to answer a health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The state of one dependency.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckView {
    /// `ok`, `down`, or `disabled` (not configured).
    pub status: &'static str,
    /// How long the probe took, in milliseconds (null when disabled).
    pub latency_ms: Option<f64>,
}

/// The change events' state.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EventsView {
    /// `ok`, `lagging` (the oldest unpublished event waits more than 10 s; never makes the
    /// service unready), `down` (the broker refused or failed the last publication; the
    /// events wait in the outbox) or `disabled` (no `AMQP_URL`: the pull feed only).
    pub status: &'static str,
    /// Events not yet published (without a broker: not yet in the feed), counted up to 100,000.
    pub pending: u64,
    /// The oldest of them's age, in seconds (null when none waits).
    pub oldest_pending_age_seconds: Option<f64>,
    /// Why the last publication failed while `down`: `unreachable`, `refused` or `unconfirmed`.
    pub reason: Option<&'static str>,
}

/// The dependencies' states.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ChecksView {
    /// PostgreSQL.
    pub database: CheckView,
    /// Redis.
    pub cache: CheckView,
    /// The read replica (`DATABASE_READ_URL`; `disabled` without). While it is down, reads go
    /// to the primary: `degraded`, still 200.
    pub replica: CheckView,
    /// The event broker and the outbox.
    pub events: EventsView,
}

/// The service's health.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HealthView {
    /// `ok`, `degraded` (the cache, the read replica or the event broker is down; still 200)
    /// or `down` (the database is down; 503).
    pub status: &'static str,
    /// The service version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Per dependency.
    pub checks: ChecksView,
}

/// A health answer: 200, or 503 with `Retry-After` when the service cannot serve.
#[derive(Debug)]
pub struct HealthReply<T: JsonSchema> {
    healthy: bool,
    data: T,
}

impl<T: Serialize + JsonSchema> Responder for HealthReply<T> {
    type Body = BoxBody;

    fn respond_to(self, _request: &HttpRequest) -> HttpResponse {
        let envelope = Envelope {
            success: self.healthy,
            data: Some(self.data),
            error: (!self.healthy).then_some("service_unavailable"),
            message: if self.healthy { "healthy" } else { "a required dependency is down" }.to_owned(),
            meta: None,
        };
        let status = if self.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let mut response = HttpResponse::build(status).json(envelope);
        if !self.healthy {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

crate::envelope::envelope_component!(
    HealthReply,
    [
        (StatusCode::OK, "Serving"),
        (StatusCode::SERVICE_UNAVAILABLE, "The database is down; `Retry-After` says when to retry")
    ]
);

/// The liveness answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LiveView {
    /// Always `ok`.
    pub status: &'static str,
}

async fn probe_database(state: &AppState) -> CheckView {
    probe_store(state.database.as_ref(), "database").await
}

/// The read replica's state: `disabled` without `DATABASE_READ_URL`.
async fn probe_replica(state: &AppState) -> CheckView {
    match &state.replica {
        Some(replica) => probe_store(replica.as_ref(), "read replica").await,
        None => CheckView { status: "disabled", latency_ms: None },
    }
}

async fn probe_store(probe: &dyn HealthProbe, name: &'static str) -> CheckView {
    let started = Instant::now();
    let result = tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await;
    let latency_ms = Some(started.elapsed().as_secs_f64() * 1_000.0);
    match result {
        Ok(Ok(())) => CheckView { status: "ok", latency_ms },
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::error::error_chain(error.as_ref()), "{name} health probe failed");
            CheckView { status: "down", latency_ms }
        }
        Err(_) => {
            tracing::warn!("{name} health probe timed out");
            CheckView { status: "down", latency_ms }
        }
    }
}

async fn probe_cache(state: &AppState) -> CheckView {
    let started = Instant::now();
    // The cache bounds its own calls with a short timeout.
    let health = state.cache.health().await;
    let latency_ms = Some(started.elapsed().as_secs_f64() * 1_000.0);
    match health {
        CacheHealth::Up => CheckView { status: "ok", latency_ms },
        CacheHealth::Down => CheckView { status: "down", latency_ms },
        CacheHealth::Disabled => CheckView { status: "disabled", latency_ms: None },
    }
}

/// Service health
///
/// The database, the cache and the read replica with probe latency, and the change events'
/// backlog. The cache, the replica or the event broker being down only degrades the service
/// (200, `degraded`); the database being down makes it unable to serve (503, `down`).
#[api_operation(tag = "health", no_security)]
pub async fn health(state: Data<AppState>) -> HealthReply<HealthView> {
    let (database, cache, replica) =
        futures_util::join!(probe_database(&state), probe_cache(&state), probe_replica(&state));
    let healthy = database.status == "ok";
    let report = state.relay.report(state.service.now());
    let events = EventsView {
        status: report.status.as_str(),
        pending: report.pending,
        oldest_pending_age_seconds: report.oldest_pending_age.map(|age| age.as_secs_f64()),
        reason: report.reason,
    };
    let status = match (healthy, cache.status, replica.status, report.status) {
        (false, ..) => "down",
        (true, "down", _, _) | (true, _, "down", _) | (true, _, _, EventsStatus::Down) => "degraded",
        (true, ..) => "ok",
    };
    HealthReply {
        healthy,
        data: HealthView {
            status,
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: state.started_at.elapsed().as_secs(),
            checks: ChecksView { database, cache, replica, events },
        },
    }
}

/// Liveness
///
/// 200 whenever the process answers.
#[api_operation(tag = "health", no_security)]
pub async fn live() -> HealthReply<LiveView> {
    HealthReply { healthy: true, data: LiveView { status: "ok" } }
}

/// Readiness
///
/// 200 when the database answers, else 503.
#[api_operation(tag = "health", no_security)]
pub async fn ready(state: Data<AppState>) -> HealthReply<CheckView> {
    let database = probe_database(&state).await;
    HealthReply { healthy: database.status == "ok", data: database }
}

/// Prometheus metrics
///
/// Requests by route template, method and status with latency histograms; cache
/// operations and backlog; database pool connections and waiters; password hashes running.
/// With `METRICS_TOKEN` set, requires `Authorization: Bearer <METRICS_TOKEN>` (401 without).
#[api_operation(tag = "health", no_security, skip_args = "request", produces = "application/openmetrics-text")]
pub async fn metrics(state: Data<AppState>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &state.metrics_token {
        token.check(&request)?;
    }
    let text = state.metrics.render(
        (state.pool_status)(),
        (state.replica_reads)(),
        state.hasher.running(),
        state.cache.backlog(),
    );
    Ok(HttpResponse::Ok().content_type("application/openmetrics-text; version=1.0.0; charset=utf-8").body(text))
}
