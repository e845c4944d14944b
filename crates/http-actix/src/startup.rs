//! The composition root: builds the adapters from [`Settings`], wires them into the use
//! cases and serves the REST surface. `main` and the API tests both go through
//! [`Application::build`].

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use crate::abuse::Limits;
use crate::auth::failure_log::AuthFailureLog;
use crate::auth::{AuthSettings, INTERNAL_NETWORK, MetricsToken, ServiceKeys, TokenKeys};
use crate::config::{CacheSettings, EventsSettings, Settings};
use crate::dto::{CACHE_FORMAT_VERSION, JsonProfileEncoder};
use crate::error::ApiError;
use crate::events::Relay;
use crate::extract;
use crate::idempotency::IdempotencySettings;
use crate::metrics::{MeteredCache, Metrics};
use crate::middleware::{self, request_context};
use crate::routes;
use crate::state::AppState;
use crate::store::Store;
use actix_web::dev::Server;
use actix_web::middleware::{Compress, from_fn};
use actix_web::web::{self, Data};
use actix_web::{App, HttpResponse, HttpServer};
use adapters_amqp::{AmqpPublisher, AmqpSettings};
use adapters_argon2::Argon2Hasher;
use adapters_memory::{MemoryCache, MemoryCacheConfig, MemoryRateLimiter};
use adapters_redis::{RedisCache, RedisCacheConfig, RedisRateLimiter};
use apistos::app::OpenApiWrapper;
use apistos::info::Info;
use apistos::security::{ApiKey, ApiKeyIn, Http, SecurityScheme, SecurityType};
use apistos::spec::Spec;
use apistos::tag::Tag;
use domain::auth::{Scope, Scopes};
use domain::cache::{CommitPositions, InvalidationLedger, InvalidationsOnly, NoCache, ProfileCache};
use domain::login_guard::{GuessLimits, LoginGuard};
use domain::ports::{EventPublisher, Spawner, SystemClock};
use domain::rate_limit::{FallbackRateLimiter, RateLimit, RateLimiter};
use domain::service::{Ports, UserService};
use secrecy::ExposeSecret;
use tokio_util::task::TaskTracker;

/// How long in-flight requests may take to finish after SIGTERM or SIGINT.
const SHUTDOWN_GRACE_SECONDS: u64 = 10;

/// A bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    cache: Arc<dyn ProfileCache>,
    in_flight: TaskTracker,
    /// The background tasks (event relay, purge), stopped with the server: they hold the
    /// store, whose embedded file stays locked while it lives.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("port", &self.port).finish_non_exhaustive()
    }
}

/// Either scheme satisfies an operation unless it says otherwise: `ServiceKey` for the
/// gateway and the senders, `BearerAuth` for end users (their own resources only).
fn security_schemes() -> Vec<BTreeMap<String, SecurityScheme>> {
    let scheme = |name: &str, security_type, description: &str| {
        BTreeMap::from([(
            name.to_owned(),
            SecurityScheme {
                _type: security_type,
                description: Some(description.to_owned()),
                extensions: Default::default(),
            },
        )])
    };
    vec![
        scheme(
            "ServiceKey",
            SecurityType::ApiKey(ApiKey { name: "X-Service-Key".to_owned(), _in: ApiKeyIn::Header }),
            &format!(
                "A key from SERVICE_API_KEYS. Each key carries scopes ({}, or * for all); each operation names \
                 the one it needs, and a missing scope is 403. Without a key, TRUST_INTERNAL_NETWORK grants {} only.",
                Scope::ALL.map(Scope::name).join(", "),
                Scopes::INTERNAL_NETWORK
            ),
        ),
        scheme(
            "BearerAuth",
            SecurityType::Http(Http { scheme: "bearer".to_owned(), bearer_format: Some("JWT".to_owned()) }),
            "An access token from POST /api/v1/auth/login; reaches only the user's own resources.",
        ),
    ]
}

fn openapi_spec() -> Spec {
    let tag = |name: &str, description: &str| Tag {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        ..Default::default()
    };
    Spec {
        info: Info {
            title: "user-service".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: Some(
                "Who a user is and how to reach them, what they agreed to receive, and where to push. \
                 Every body, success or error, is the envelope `{success, data, error, message, meta}`; \
                 errors may add `details` (field, message) on 422. Every response carries `X-Request-ID`."
                    .to_owned(),
            ),
            ..Default::default()
        },
        securities: security_schemes(),
        tags: vec![
            tag("auth", "Access tokens for end users"),
            tag("users", "Registration, profile and contact details"),
            tag(
                "preferences",
                "Per-channel opt-in, quiet hours, per-category choices, and the consent history of every change",
            ),
            tag(
                "categories",
                "The catalogue of notification categories: kinds of message users opt in to or out of; critical \
                 ones are sent whatever users opted out of",
            ),
            tag("devices", "Push tokens for web, iOS and Android"),
            tag("eligibility", "May this user be notified on this channel now, and if not, when?"),
            tag(
                "events",
                "Every committed change as a CloudEvent: the pull feed of what the broker (AMQP_URL) receives",
            ),
            tag("health", "Liveness, readiness and dependency health"),
            tag("legacy", "Deprecated paths of existing clients"),
        ],
        ..Default::default()
    }
}

/// The Redis cache when `REDIS_URL` is set (with the store's invalidation ledger), else the
/// in-process one; with `CACHE_ENABLED=false`, none, except that Redis still deletes the
/// downstream copies of `CACHE_INVALIDATE_EXTRA_KEYS`. Never connects here: the service
/// starts while Redis is down.
fn build_cache(settings: &Settings, store: &Store, metrics: &Arc<Metrics>) -> anyhow::Result<Arc<dyn ProfileCache>> {
    let redis = match &settings.cache {
        // Without caching, no reader of ours trusts Redis: the ledger would protect nobody.
        Some(cache) => Some(build_redis_cache(
            cache,
            settings.cache_enabled.then(|| store.invalidation_ledger()),
            store.commit_positions(),
        )?),
        None => {
            let templates = &settings.extra_invalidation_keys_without_redis;
            if !templates.is_empty() {
                tracing::warn!(
                    templates = ?templates,
                    "CACHE_INVALIDATE_EXTRA_KEYS is set without REDIS_URL: downstream copies are NOT deleted; \
                     set REDIS_URL to the Redis server and database the gateway caches in"
                );
            }
            None
        }
    };
    if !settings.cache_enabled {
        tracing::info!(cache = "disabled", "CACHE_ENABLED=false: every read goes to the store");
        return Ok(match redis {
            // Downstream copies stay as exact as with caching on.
            Some(redis) if settings.cache.as_ref().is_some_and(|cache| !cache.extra_invalidation_keys.is_empty()) => {
                Arc::new(MeteredCache::new(Arc::new(InvalidationsOnly(redis)), Arc::clone(metrics)))
            }
            _ => Arc::new(NoCache),
        });
    }
    let Some(redis) = redis else {
        if settings.database.url.is_some() {
            tracing::warn!(
                "PostgreSQL without REDIS_URL: users are cached in process, which is coherent only \
                 with a single instance; with several instances set REDIS_URL (or CACHE_ENABLED=false)"
            );
        } else {
            tracing::info!(cache = "memory", "no REDIS_URL: caching users in process");
        }
        let memory = MemoryCache::new(MemoryCacheConfig { ttl: settings.cache_ttl, ..MemoryCacheConfig::default() });
        return Ok(Arc::new(MeteredCache::new(Arc::new(memory), Arc::clone(metrics))));
    };
    Ok(Arc::new(MeteredCache::new(redis, Arc::clone(metrics))))
}

/// The Redis cache of `cache`, with the store's invalidation ledger when it serves readers,
/// logging where it deletes downstream copies.
fn build_redis_cache(
    cache: &CacheSettings,
    ledger: Option<Arc<dyn InvalidationLedger>>,
    positions: Option<Arc<dyn CommitPositions>>,
) -> anyhow::Result<Arc<dyn ProfileCache>> {
    let config = RedisCacheConfig {
        ttl: cache.ttl,
        key_prefix: cache.key_prefix.clone(),
        format_version: CACHE_FORMAT_VERSION.to_owned(),
        timeout: cache.timeout,
        extra_invalidation_keys: cache.extra_invalidation_keys.clone(),
        extra_invalidation_delays: cache.extra_invalidation_delays.clone(),
        confirm_wait: cache.confirm_wait,
        near_cache_max_bytes: cache.near_cache_max_bytes,
        sentinel: cache.sentinel.clone(),
        cluster: cache.cluster.clone(),
        ..RedisCacheConfig::new(cache.url.clone())
    };
    let redacted_url = config.redacted_url();
    let database = config.database();
    let redis = match (ledger, positions) {
        (Some(ledger), Some(positions)) => RedisCache::build_with_ledger_and_positions(config, ledger, positions),
        (Some(ledger), None) => RedisCache::build_with_ledger(config, ledger),
        (None, _) => RedisCache::build(config),
    }
    .map_err(|error| anyhow::anyhow!("REDIS_URL: {error}"))?;
    match (&cache.sentinel, &cache.cluster) {
        // The URL's host is not used then: name what is.
        (_, Some(nodes)) => tracing::info!(
            nodes = ?nodes,
            ttl_seconds = cache.ttl.as_secs(),
            "caching users in the Redis Cluster these nodes belong to (no near-cache)"
        ),
        (Some(sentinel), None) => tracing::info!(
            sentinels = ?sentinel.sentinels,
            master = %sentinel.master_name,
            redis_database = database.unwrap_or_default(),
            ttl_seconds = cache.ttl.as_secs(),
            "caching users in the Redis master that the Sentinels name"
        ),
        (None, None) => {
            tracing::info!(url = %redacted_url, ttl_seconds = cache.ttl.as_secs(), "caching users in Redis")
        }
    }
    if !cache.extra_invalidation_keys.is_empty() && cache.extra_invalidation_delays.is_empty() {
        tracing::warn!(
            "CACHE_INVALIDATE_EXTRA_DELAYS=none: a client's unguarded fill racing a change can leave its \
             downstream copy stale until that copy expires"
        );
    }
    if !cache.extra_invalidation_keys.is_empty() {
        let delays: Vec<String> =
            cache.extra_invalidation_delays.iter().map(|delay| format!("{}ms", delay.as_millis())).collect();
        tracing::info!(
            templates = ?cache.extra_invalidation_keys,
            redis_database = database.unwrap_or_default(),
            url = %redacted_url,
            follow_up_delays = ?delays,
            "deleting downstream copies on every change (CACHE_INVALIDATE_EXTRA_KEYS) in this Redis database, and \
             again after each follow-up delay; the client caching them must use the same Redis server and database"
        );
    }
    Ok(Arc::new(redis))
}

/// Service keys and token keys; warns when the network is trusted instead.
fn auth_settings(settings: &Settings) -> AuthSettings {
    let config = &settings.auth;
    if config.trust_internal_network {
        tracing::warn!(
            scopes = %Scopes::INTERNAL_NETWORK,
            "TRUST_INTERNAL_NETWORK is on: requests without credentials act as the service {INTERNAL_NETWORK} \
             with these scopes only; run like this only behind a network that authenticates its callers"
        );
    }
    if config.secret_key_generated {
        tracing::warn!(
            "no SECRET_KEY: generated a random one for the embedded default; access tokens \
             will not survive a restart (set SECRET_KEY to keep them)"
        );
    }
    if config.service_api_keys.is_empty() && !config.trust_internal_network {
        tracing::info!("no SERVICE_API_KEYS: only end users with access tokens can call protected routes");
    }
    let service_keys = ServiceKeys::new(&config.service_api_keys);
    if !config.service_api_keys.is_empty() {
        tracing::info!(callers = ?service_keys.describe(), "service keys accepted (name and scopes)");
    }
    AuthSettings {
        service_keys,
        tokens: TokenKeys::new(
            config.secret_key.clone(),
            config.jwt_issuer.clone(),
            config.jwt_audience.clone(),
            config.jwt_ttl,
        ),
        trust_internal_network: config.trust_internal_network,
    }
}

/// Counters in Redis when configured (falling back to process memory while it is down),
/// in process memory otherwise.
fn build_limits(settings: &Settings) -> anyhow::Result<Limits> {
    let redis: Option<Arc<dyn RateLimiter>> = match &settings.cache {
        None => None,
        Some(cache) => {
            let config = RedisCacheConfig {
                key_prefix: cache.key_prefix.clone(),
                timeout: cache.timeout,
                sentinel: cache.sentinel.clone(),
                cluster: cache.cluster.clone(),
                ..RedisCacheConfig::new(cache.url.clone())
            };
            let redis = RedisRateLimiter::build(&config).map_err(|error| anyhow::anyhow!("REDIS_URL: {error}"))?;
            Some(Arc::new(redis))
        }
    };
    // Each kind of counter has its own in-process store (or fallback): a flood of one kind
    // fills only its own store, and cannot evict another kind's counters.
    let store = || -> Arc<dyn RateLimiter> {
        let memory: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::new());
        match &redis {
            None => memory,
            Some(redis) => Arc::new(FallbackRateLimiter::new(Arc::clone(redis), memory)),
        }
    };
    let limits = &settings.limits;
    let guesses = GuessLimits {
        per_address: RateLimit { limit: limits.login_max_failures, window: limits.login_failure_window },
        per_account: RateLimit { limit: limits.login_account_max_failures, window: limits.login_failure_window },
        slowed_interval: limits.login_slowed_interval,
        known_for: limits.login_known_address_for,
        token_lifetime: settings.auth.jwt_ttl,
    };
    Ok(Limits {
        attempts: store(),
        per_address: RateLimit { limit: limits.per_address, window: limits.per_address_window },
        guard: LoginGuard::new(store(), store(), guesses),
        trusted_proxies: limits.trusted_proxies.clone(),
    })
}

/// How long connecting to the event broker and waiting for its confirms may take: a
/// broker slower than this is treated as down for the round (the events wait).
const BROKER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
const BROKER_CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The event broker, when `AMQP_URL` is set (it connects at the first publication, so that
/// a broker down at start delays nothing else).
fn build_publisher(settings: &EventsSettings) -> anyhow::Result<Option<Arc<dyn EventPublisher>>> {
    let Some(url) = &settings.amqp_url else {
        tracing::info!("no AMQP_URL: change events are recorded and served by GET /api/v1/events only");
        return Ok(None);
    };
    let publisher = AmqpPublisher::new(AmqpSettings {
        url: url.expose_secret().to_owned(),
        exchange: settings.exchange.clone(),
        connect_timeout: BROKER_CONNECT_TIMEOUT,
        confirm_timeout: BROKER_CONFIRM_TIMEOUT,
    })?;
    tracing::info!(exchange = %settings.exchange, "publishing change events to the AMQP broker");
    Ok(Some(Arc::new(publisher)))
}

/// How often expired idempotency records are deleted, and how many at a time.
const IDEMPOTENCY_PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);
const IDEMPOTENCY_PURGE_BATCH: i64 = 10_000;

/// Deletes expired idempotency records in the background (they are ignored once expired;
/// this only keeps the table small).
fn spawn_idempotency_purge(store: Store, service: UserService) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(IDEMPOTENCY_PURGE_INTERVAL);
        loop {
            interval.tick().await;
            match store.purge_expired_idempotency_records(IDEMPOTENCY_PURGE_BATCH, service.now()).await {
                Ok(0) => {}
                Ok(purged) => tracing::debug!(purged, "expired idempotency records deleted"),
                Err(error) => tracing::warn!(error = %crate::error::error_chain(&error), "idempotency purge failed"),
            }
        }
    })
}

impl Application {
    /// Connects to the dependencies, runs migrations when configured, and binds the port
    /// (`PORT=0` binds a free one, see [`Application::port`]).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store = Store::open(&settings.database, settings.database.migrate_on_startup).await?;
        // Everything that may fail comes before the background tasks start (they would
        // outlive a failed build, holding the store).
        let listener = TcpListener::bind((settings.host, settings.port))?;
        let port = listener.local_addr()?.port();
        let publisher = build_publisher(&settings.events)?;
        let hasher = Argon2Hasher::new(settings.password_hash_concurrency, settings.password_hash_queue_timeout)
            .map_err(|error| anyhow::anyhow!("preparing password hashing failed: {error}"))?;
        let metrics = Arc::new(Metrics::new());
        let cache = build_cache(&settings, &store, &metrics)?;
        let limits = build_limits(&settings)?;
        let auth = auth_settings(&settings);
        // Requests and the writes they detach, which a stop waits for.
        let in_flight = TaskTracker::new();
        let service = UserService::new(Ports {
            users: store.users(),
            devices: store.devices(),
            categories: store.categories(),
            history: store.consent_history(),
            idempotency: store.idempotency(),
            hasher: Arc::new(hasher.clone()),
            clock: Arc::new(SystemClock),
            cache: cache.clone(),
            encoder: Arc::new(JsonProfileEncoder),
            spawner: Arc::new(TrackedSpawner(in_flight.clone())),
        });
        let purge = spawn_idempotency_purge(store.clone(), service.clone());
        let events = store.events();
        let (relay, relaying) = Relay {
            outbox: events.clone(),
            publisher,
            batch: settings.events.relay_batch,
            retention: settings.events.retention,
            clock: Arc::new(SystemClock),
            metrics: metrics.clone(),
        }
        .spawn();
        let cache_to_finish = cache.clone();
        let state = Data::new(AppState {
            service,
            database: store.probe(),
            replica: store.replica_probe(),
            cache,
            events,
            relay,
            auth,
            limits,
            idempotency: IdempotencySettings {
                ttl: settings.idempotency_ttl,
                fingerprint_key: settings.auth.secret_key.clone(),
            },
            metrics,
            pool_status: {
                let store = store.clone();
                Arc::new(move || Some(store.pool_status()))
            },
            replica_reads: {
                let store = store.clone();
                Arc::new(move || store.replica_reads())
            },
            hasher,
            started_at: Instant::now(),
            auth_failure_log: AuthFailureLog::default(),
            metrics_token: settings.metrics_token.as_ref().map(MetricsToken::new),
            in_flight: in_flight.clone(),
        });

        let max_body_bytes = settings.max_body_bytes;
        let body_timeout = extract::BodyTimeout(settings.request_body_timeout);
        let compress_min_bytes = settings.compress_min_bytes;
        let server = HttpServer::new(move || {
            App::new()
                .document(openapi_spec())
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(max_body_bytes))
                .app_data(body_timeout)
                .app_data(middleware::CompressMinBytes(compress_min_bytes))
                .app_data(web::JsonConfig::default().limit(max_body_bytes).error_handler(extract::json_error))
                .app_data(web::PathConfig::default().error_handler(extract::path_error))
                .app_data(web::QueryConfig::default().error_handler(extract::query_error))
                .wrap(from_fn(middleware::small_answers_uncompressed))
                .wrap(Compress::default())
                .wrap(from_fn(request_context))
                .configure(routes::configure)
                .default_service(web::to(|| async { Err::<HttpResponse, _>(ApiError::route_not_found()) }))
                .build("/openapi.json")
                .service(routes::docs::service())
        })
        .workers(settings.workers)
        // An answer written in more than one piece (a compressed one is streamed in chunks)
        // must not wait for the caller's acknowledgement of the first: with Nagle's algorithm
        // on (the OS default), the last piece waited for the caller's delayed ACK, 40 ms on
        // Linux, on every such answer.
        .tcp_nodelay(true)
        // SIGTERM/SIGINT are handled by `run_until_stopped`, which drains before it stops.
        .disable_signals()
        // Requests still in flight at the stop get this long to finish.
        .shutdown_timeout(SHUTDOWN_GRACE_SECONDS)
        .listen(listener)?
        .run();
        Ok(Self { port, server, store, cache: cache_to_finish, in_flight, background: vec![purge, relaying] })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server is stopped. SIGTERM and SIGINT stop accepting connections,
    /// let in-flight requests and the writes they started finish, also those whose client
    /// hung up (up to 10 s; a statement times out before), then stop the workers, let the
    /// cache finish what outlives the writes (pending invalidations, follow-up deletions: a
    /// few seconds at most), and close the database pool. Writes run on the workers'
    /// runtimes: stopping the workers first would cut a write between its commit and its
    /// invalidation.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        // On a task of its own: the server answers `pause` and `stop` only while polled.
        let mut server = tokio::spawn(self.server);
        let served = tokio::select! {
            served = &mut server => served,
            () = stop_signal() => {
                handle.pause().await;
                self.in_flight.close();
                let grace = std::time::Duration::from_secs(SHUTDOWN_GRACE_SECONDS);
                // One grace period in all: what is still running after it is cut, not given
                // the server's own graceful wait on top.
                let drained = tokio::select! {
                    waited = tokio::time::timeout(grace, self.in_flight.wait()) => waited.is_ok(),
                    () = stop_signal() => {
                        tracing::warn!("a second stop signal: stopping now");
                        false
                    }
                };
                if !drained {
                    tracing::warn!(still_running = self.in_flight.len(), "stopping with requests or writes still running");
                }
                handle.stop(drained).await;
                server.await
            }
        }
        .unwrap_or_else(|failed| Err(std::io::Error::other(failed)));
        // Events not yet published wait in the store for the next instance's relay.
        for task in &self.background {
            task.abort();
        }
        for task in self.background {
            let _ = task.await;
        }
        self.cache.finish_pending().await;
        self.store.close();
        tracing::info!("user-service stopped");
        served
    }

    /// A handle that stops the server gracefully, as SIGTERM does.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }
}

/// Runs the use cases' writes on tokio tasks, which outlive the request that started them
/// (actix drops a handler's future when its connection closes), tracked so that a stop
/// waits for them.
struct TrackedSpawner(TaskTracker);

impl Spawner for TrackedSpawner {
    fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>) {
        self.0.spawn(task);
    }
}

/// SIGTERM (an orchestrator stopping the instance) or SIGINT (Ctrl-C).
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "SIGTERM cannot be handled; stop with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
