//! Configuration from environment variables (and a `.env` file, loaded by `main`).
//!
//! Every variable has a documented default in `.env.example`; an invalid value stops the
//! service with a message that names the variable.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use domain::auth::Scopes;
use secrecy::SecretString;

use serde::{Deserialize, Serialize};

use crate::auth::client_address::Network;

mod values;

use values::{
    AmqpUrl, DatabaseUrl, Days, ExchangeName, FollowUpDelays, Host, HostPorts, KeyTemplates, LogLevel, MetricsToken,
    Millis, Port, Positive, RedisUrl, Seconds, SecretKey, ServiceKeys, TrustedProxies,
};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on (`HOST`).
    pub host: IpAddr,
    /// Port to listen on (`PORT`; 0 picks a free port, as the tests do).
    pub port: u16,
    /// The store: PostgreSQL (`DATABASE_URL`, `DATABASE_POOL_*`) or the embedded SQLite
    /// file (`DATA_DIR`).
    pub database: DatabaseSettings,
    /// The Redis cache (`REDIS_URL`, `CACHE_*`, `REDIS_*`); `None` caches in process.
    pub cache: Option<CacheSettings>,
    /// Change events (`AMQP_URL`, `AMQP_EXCHANGE`, `EVENTS_*`).
    pub events: EventsSettings,
    /// `CACHE_INVALIDATE_EXTRA_KEYS` given without `REDIS_URL`: nothing can delete those
    /// copies (warned at start).
    pub extra_invalidation_keys_without_redis: Vec<String>,
    /// How long a cached user lives, in Redis or in process (`CACHE_TTL`, seconds).
    pub cache_ttl: Duration,
    /// `CACHE_ENABLED=false` reads every user from the store (benchmarks of the uncached
    /// path, debugging); default true.
    pub cache_enabled: bool,
    /// Who may call and how (`SECRET_KEY`, `SERVICE_API_KEYS`, `TRUST_INTERNAL_NETWORK`,
    /// `JWT_*`).
    pub auth: AuthConfig,
    /// Abuse limits (`LOGIN_*`, `RATE_LIMIT_*`, `TRUSTED_PROXIES`).
    pub limits: LimitSettings,
    /// How long idempotency records live (`IDEMPOTENCY_TTL`, seconds).
    pub idempotency_ttl: Duration,
    /// Largest accepted request body (`MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Smallest answer compressed for a caller that accepts compression
    /// (`COMPRESS_MIN_BYTES`); smaller ones go out as they are, in one piece.
    pub compress_min_bytes: usize,
    /// How long a request body may take to arrive in full before the answer is 408
    /// (`REQUEST_BODY_TIMEOUT`, seconds).
    pub request_body_timeout: Duration,
    /// A bearer token `/metrics` requires (`METRICS_TOKEN`, at least 16 characters); unset,
    /// `/metrics` is public.
    pub metrics_token: Option<SecretString>,
    /// Password hashes computed at once (`PASSWORD_HASH_CONCURRENCY`, default: CPU count).
    pub password_hash_concurrency: usize,
    /// How long a registration waits for a hashing slot before answering 503
    /// (`PASSWORD_HASH_QUEUE_TIMEOUT_MS`).
    pub password_hash_queue_timeout: Duration,
    /// HTTP worker threads (`WORKERS`, default: CPU count).
    pub workers: usize,
    /// Threads of the runtime that runs the background tasks: the near-cache's freshness
    /// checks, the event relay, the cache's retries and lease renewals, and the database
    /// connections opened at start or by those tasks, which the pool lends to requests too
    /// (`BACKGROUND_THREADS`, default: a quarter of the CPU count, at least one).
    pub background_threads: usize,
    /// `json` or `pretty` (`LOG_FORMAT`).
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `user_service=debug` (`LOG_LEVEL`).
    pub log_level: String,
}

/// How the database is reached.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// A `postgres://` URL (the seed's `postgresql+asyncpg://` is accepted and rewritten);
    /// `None` stores data in SQLite under `data_dir` (the embedded default).
    pub url: Option<String>,
    /// Where the embedded store keeps its file (`DATA_DIR`, default `./data`).
    pub data_dir: PathBuf,
    /// Connections in the pool (`DATABASE_POOL_SIZE`).
    pub pool_size: usize,
    /// Wait for a free connection before answering 503 (`DATABASE_POOL_TIMEOUT_MS`).
    pub pool_timeout: Duration,
    /// Server-side statement limit (`DATABASE_STATEMENT_TIMEOUT_MS`).
    pub statement_timeout: Duration,
    /// Whether to apply pending migrations at start-up (`MIGRATE_ON_STARTUP`).
    pub migrate_on_startup: bool,
    /// Whether PostgreSQL connections cache prepared statements
    /// (`DATABASE_PREPARED_STATEMENTS`; always off behind a transaction pooler).
    pub prepared_statements: bool,
    /// What stands between the service and PostgreSQL (`DATABASE_POOLER`).
    pub pooler: DatabasePooler,
    /// A streaming replica of the database that cache misses may be read from once it has
    /// applied the changes they must see (`DATABASE_READ_URL`).
    pub read_url: Option<String>,
}

/// What stands between the service and PostgreSQL (`DATABASE_POOLER`: `none` or
/// `transaction`; an empty value is the default, as for every variable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabasePooler {
    /// Nothing, or a pooler in session mode.
    #[default]
    None,
    /// A pooler that lends a server connection per transaction (PgBouncer
    /// `pool_mode=transaction`): every unit of work runs in a transaction of its own.
    Transaction,
}

/// Authentication settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Signs access tokens: at least 32 bytes, never the seed's placeholder.
    pub secret_key: SecretString,
    /// Whether `secret_key` was generated at start (embedded default without `SECRET_KEY`):
    /// tokens then do not survive a restart.
    pub secret_key_generated: bool,
    /// Keys accepted in `X-Service-Key`.
    pub service_api_keys: Vec<ServiceKeyConfig>,
    /// Whether calls without credentials act as the service `internal-network`, with the
    /// scopes of the seed's gateway and push sender only.
    pub trust_internal_network: bool,
    /// How long access tokens live (`JWT_TTL`, seconds).
    pub jwt_ttl: Duration,
    /// The `iss` of access tokens (`JWT_ISSUER`).
    pub jwt_issuer: String,
    /// The `aud` of access tokens (`JWT_AUDIENCE`).
    pub jwt_audience: String,
}

/// One key accepted in `X-Service-Key` (an entry of `SERVICE_API_KEYS`).
#[derive(Debug, Clone)]
pub struct ServiceKeyConfig {
    /// The caller's name, logged with its requests; `None` in the plain form (a name is
    /// then derived from the key's digest).
    pub name: Option<String>,
    /// The key, at least 16 characters.
    pub key: SecretString,
    /// What its holder may do; every scope in the plain form.
    pub scopes: Scopes,
}

/// Abuse limits.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Wrong guesses at one account's password (logins, password changes) from one client
    /// address per window (`LOGIN_MAX_FAILURES`).
    pub login_max_failures: u32,
    /// The window of wrong guesses (`LOGIN_FAILURE_WINDOW_SECONDS`).
    pub login_failure_window: Duration,
    /// Wrong guesses at one account from all addresses per window, before addresses that
    /// never logged in to it are slowed (`LOGIN_ACCOUNT_MAX_FAILURES`).
    pub login_account_max_failures: u32,
    /// Once that budget is spent, the one attempt per this interval that unknown addresses
    /// share (`LOGIN_SLOWED_INTERVAL_SECONDS`).
    pub login_slowed_interval: Duration,
    /// How long an address that logged in successfully stays known to the account
    /// (`LOGIN_KNOWN_ADDRESS_DAYS`).
    pub login_known_address_for: Duration,
    /// Logins and registrations per client address per window (`RATE_LIMIT_PER_ADDRESS`).
    pub per_address: u32,
    /// The per-address window (`RATE_LIMIT_WINDOW_SECONDS`).
    pub per_address_window: Duration,
    /// Proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`, addresses or CIDRs).
    pub trusted_proxies: Vec<Network>,
}

/// Change events: where they are published, how long they are kept.
#[derive(Clone)]
pub struct EventsSettings {
    /// The broker (`AMQP_URL`); `None`: events are recorded and served by the pull feed only.
    pub amqp_url: Option<SecretString>,
    /// The topic exchange events are published to (`AMQP_EXCHANGE`, default `user.events`).
    pub exchange: String,
    /// How long events are kept once done with (`EVENTS_RETENTION`, seconds, default 7 days).
    pub retention: Duration,
    /// How many events one relay round publishes at most (`EVENTS_RELAY_BATCH`, ≤ 1000).
    pub relay_batch: u32,
}

impl std::fmt::Debug for EventsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventsSettings")
            .field("broker", &self.amqp_url.is_some())
            .field("exchange", &self.exchange)
            .field("retention", &self.retention)
            .field("relay_batch", &self.relay_batch)
            .finish()
    }
}

/// How the Redis cache is reached and used.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// `redis://` URL (`REDIS_URL`).
    pub url: String,
    /// How long a cached user lives (`CACHE_TTL`, seconds).
    pub ttl: Duration,
    /// First segment of every key (`CACHE_KEY_PREFIX`).
    pub key_prefix: String,
    /// Bound on every Redis call (`REDIS_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Downstream copies deleted on every change: key templates with `{id}`
    /// (`CACHE_INVALIDATE_EXTRA_KEYS`, comma-separated).
    pub extra_invalidation_keys: Vec<String>,
    /// Delays after each invalidation at which the downstream copies are deleted again
    /// (`CACHE_INVALIDATE_EXTRA_DELAYS`, comma-separated, e.g. `250ms,1s,2s`).
    pub extra_invalidation_delays: Vec<Duration>,
    /// How long a change waits for Redis to confirm its invalidation before it is recorded
    /// in the invalidation ledger instead (`CACHE_CONFIRM_WAIT_MS`, at most 10,000).
    pub confirm_wait: Duration,
    /// The most bytes of users kept in process in front of Redis, 0 when the near-cache is
    /// off (`NEAR_CACHE_MAX_BYTES`; `NEAR_CACHE_ENABLED=false` or `CACHE_ENABLED=false` turn
    /// it off).
    pub near_cache_max_bytes: u64,
    /// The master found through Redis Sentinel (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`)
    /// rather than at `url`'s host; `url` still gives the credentials and the database.
    pub sentinel: Option<adapters_redis::SentinelConfig>,
    /// Some nodes of the Redis Cluster the cache and the rate limiter use
    /// (`REDIS_CLUSTER_NODES`), rather than `url`'s server; `url` still gives the credentials.
    pub cluster: Option<Vec<(String, u16)>>,
}

impl<'de> Deserialize<'de> for DatabasePooler {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match String::deserialize(deserializer)?.as_str() {
            "none" => Ok(Self::None),
            "transaction" => Ok(Self::Transaction),
            _ => Err(serde::de::Error::custom("must be `none` or `transaction` (PgBouncer's pool_mode=transaction)")),
        }
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines, for terminals.
    Pretty,
}

/// The largest near-cache accepted: 16 GiB.
const MAX_NEAR_CACHE_BYTES: u64 = 16 * 1024 * 1024 * 1024;

/// A configuration error; the message names the variable and never echoes a secret.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// The variables the service reads, one field per variable (its name upper-cased), typed,
/// each with the default of [`Variables::default`]. Types whose values are secrets serialize
/// masked, so that `user-service config` can print the whole struct.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
struct Variables {
    host: Host,
    port: Port,
    database_url: Option<DatabaseUrl>,
    data_dir: PathBuf,
    database_pool_size: Positive<usize, 1_000>,
    database_pool_timeout_ms: Millis,
    database_statement_timeout_ms: Millis,
    migrate_on_startup: bool,
    database_prepared_statements: bool,
    database_pooler: DatabasePooler,
    database_read_url: Option<DatabaseUrl>,
    redis_url: Option<RedisUrl>,
    redis_sentinels: HostPorts,
    redis_sentinel_master: String,
    redis_cluster_nodes: HostPorts,
    redis_timeout_ms: Millis,
    amqp_url: Option<AmqpUrl>,
    amqp_exchange: ExchangeName,
    events_retention: Seconds,
    events_relay_batch: Positive<u32, 1_000>,
    cache_ttl: Seconds,
    cache_enabled: bool,
    cache_key_prefix: String,
    cache_confirm_wait_ms: Millis,
    /// Unset: on, but with a Redis Cluster.
    near_cache_enabled: Option<bool>,
    near_cache_max_bytes: Positive<u64, MAX_NEAR_CACHE_BYTES>,
    cache_invalidate_extra_keys: KeyTemplates,
    cache_invalidate_extra_delays: FollowUpDelays,
    secret_key: Option<SecretKey>,
    service_api_keys: ServiceKeys,
    trust_internal_network: bool,
    jwt_ttl: Seconds,
    jwt_issuer: String,
    jwt_audience: String,
    login_max_failures: Positive<u32>,
    login_failure_window_seconds: Seconds,
    login_account_max_failures: Positive<u32>,
    login_slowed_interval_seconds: Seconds,
    login_known_address_days: Days,
    rate_limit_per_address: Positive<u32>,
    rate_limit_window_seconds: Seconds,
    trusted_proxies: TrustedProxies,
    idempotency_ttl: Seconds,
    max_body_bytes: Positive<usize, { 16 * 1024 * 1024 }>,
    compress_min_bytes: Positive<usize, { 16 * 1024 * 1024 }>,
    request_body_timeout: Seconds,
    metrics_token: Option<MetricsToken>,
    password_hash_concurrency: Positive<usize, 256>,
    password_hash_queue_timeout_ms: Millis,
    workers: Positive<usize, 1_024>,
    background_threads: Positive<usize, 1_024>,
    log_format: LogFormat,
    log_level: LogLevel,
}

impl Default for Variables {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            host: Host(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port: Port(3001),
            database_url: None,
            data_dir: PathBuf::from("./data"),
            database_pool_size: Positive(16),
            database_pool_timeout_ms: Millis::of(2_000),
            database_statement_timeout_ms: Millis::of(5_000),
            migrate_on_startup: true,
            database_prepared_statements: true,
            database_pooler: DatabasePooler::None,
            database_read_url: None,
            redis_url: None,
            redis_sentinels: HostPorts::default(),
            redis_sentinel_master: String::new(),
            redis_cluster_nodes: HostPorts::default(),
            redis_timeout_ms: Millis::of(100),
            amqp_url: None,
            amqp_exchange: ExchangeName("user.events".to_owned()),
            events_retention: Seconds::of(7 * 86_400),
            events_relay_batch: Positive(500),
            cache_ttl: Seconds::of(300),
            cache_enabled: true,
            cache_key_prefix: "user-service".to_owned(),
            cache_confirm_wait_ms: Millis::of(500),
            near_cache_enabled: None,
            near_cache_max_bytes: Positive(adapters_redis::config::DEFAULT_NEAR_CACHE_MAX_BYTES),
            cache_invalidate_extra_keys: KeyTemplates::default(),
            cache_invalidate_extra_delays: FollowUpDelays(
                adapters_redis::config::DEFAULT_EXTRA_INVALIDATION_DELAYS.to_vec(),
            ),
            secret_key: None,
            service_api_keys: ServiceKeys::default(),
            trust_internal_network: false,
            jwt_ttl: Seconds::of(3_600),
            jwt_issuer: "user-service".to_owned(),
            jwt_audience: "user-service".to_owned(),
            login_max_failures: Positive(10),
            login_failure_window_seconds: Seconds::of(900),
            login_account_max_failures: Positive(20),
            login_slowed_interval_seconds: Seconds::of(30),
            login_known_address_days: Days(30),
            rate_limit_per_address: Positive(20),
            rate_limit_window_seconds: Seconds::of(60),
            trusted_proxies: TrustedProxies::default(),
            idempotency_ttl: Seconds::of(3_600),
            max_body_bytes: Positive(64 * 1024),
            compress_min_bytes: Positive(16 * 1024),
            request_body_timeout: Seconds::of(10),
            metrics_token: None,
            password_hash_concurrency: Positive(cpus),
            password_hash_queue_timeout_ms: Millis::of(5_000),
            workers: Positive(cpus),
            background_threads: Positive((cpus / 4).max(1)),
            log_format: LogFormat::Pretty,
            log_level: LogLevel("info".to_owned()),
        }
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Variables::from_env()?.into_settings()
    }

    /// Reads the given variables instead of the environment (for tests).
    pub fn from_map(variables: HashMap<String, String>) -> Result<Self, ConfigError> {
        Variables::read(variables)?.into_settings()
    }
}

/// The effective configuration read from the environment, one `NAME=value` line per
/// variable with every secret masked (`user-service config`), or the error start-up would
/// stop with.
pub fn describe_env() -> Result<String, ConfigError> {
    describe(Variables::from_env()?)
}

/// The names of the variables the service reads (`RUST_LOG` aside, which `telemetry` reads).
pub fn variable_names() -> Vec<String> {
    match serde_json::to_value(Variables::default()) {
        Ok(serde_json::Value::Object(fields)) => fields.keys().map(|name| name.to_ascii_uppercase()).collect(),
        _ => Vec::new(),
    }
}

fn describe(variables: Variables) -> Result<String, ConfigError> {
    variables.clone().into_settings()?;
    let shown = serde_json::to_value(&variables).map_err(|error| ConfigError(format!("cannot be shown: {error}")))?;
    let serde_json::Value::Object(fields) = shown else {
        return Err(ConfigError("cannot be shown".into()));
    };
    Ok(fields
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(text) => text,
                other => other.to_string(),
            };
            format!("{}={value}\n", name.to_ascii_uppercase())
        })
        .collect())
}

impl Variables {
    fn from_env() -> Result<Self, ConfigError> {
        let ours = variable_names();
        let mut variables = HashMap::new();
        for (name, value) in std::env::vars_os() {
            // A name that is not UTF-8 is not ours; a value of ours that is not UTF-8 is an
            // error, never a silent fallback to the default.
            let Ok(name) = name.into_string() else { continue };
            match value.into_string() {
                Ok(value) => {
                    variables.insert(name, value);
                }
                Err(_) if ours.contains(&name) => return Err(ConfigError(format!("{name} is not valid UTF-8"))),
                Err(_) => {}
            }
        }
        Self::read(variables)
    }

    /// Reads `variables`: upper-case names only (so that `port` never competes with `PORT`),
    /// values trimmed, a blank value counting as unset.
    fn read(variables: HashMap<String, String>) -> Result<Self, ConfigError> {
        let set: config::Map<String, String> = variables
            .into_iter()
            .filter(|(name, _)| *name == name.to_ascii_uppercase())
            .map(|(name, value)| (name, value.trim().to_owned()))
            .filter(|(_, value)| !value.is_empty())
            .collect();
        config::Config::builder()
            .add_source(config::Environment::default().source(Some(set)))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(naming_the_variable)
    }

    /// The settings, after the rules that involve several variables.
    fn into_settings(self) -> Result<Settings, ConfigError> {
        let postgres = self.database_url.is_some();
        let (secret_key, secret_key_generated) = match self.secret_key {
            Some(SecretKey(key)) => (key, false),
            None if postgres => {
                return Err(ConfigError(
                    "SECRET_KEY is required with a PostgreSQL DATABASE_URL: at least 32 random bytes, \
                     e.g. `openssl rand -hex 32`"
                        .into(),
                ));
            }
            // Two v4 UUIDs: 244 random bits from the operating system's generator.
            None => (
                SecretString::from(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())),
                true,
            ),
        };
        if self.database_pooler != DatabasePooler::None && self.database_url.is_none() {
            return Err(ConfigError(
                "DATABASE_POOLER applies to PostgreSQL only: set DATABASE_URL, or leave DATABASE_POOLER unset".into(),
            ));
        }
        if self.database_read_url.is_some()
            && (self.database_url.is_none() || self.redis_url.is_none() || !self.cache_enabled)
        {
            return Err(ConfigError(
                "DATABASE_READ_URL needs DATABASE_URL and REDIS_URL with caching on: the replica serves cache \
                 misses, once it has applied the commit positions that every instance records in Redis with its \
                 invalidations; unset it, or set the others"
                    .into(),
            ));
        }
        let sentinel = match (self.redis_sentinels.0.is_empty(), self.redis_sentinel_master.trim()) {
            (true, "") => None,
            (false, master) if !master.is_empty() && self.redis_url.is_some() => Some(adapters_redis::SentinelConfig {
                sentinels: self.redis_sentinels.0,
                master_name: master.to_owned(),
            }),
            _ => {
                return Err(ConfigError(
                    "REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together, with REDIS_URL for the master's \
                     credentials and database (its host is not used): e.g. REDIS_SENTINELS=s1:26379,s2:26379,s3:26379 \
                     REDIS_SENTINEL_MASTER=mymaster REDIS_URL=redis://:password@redis-master/0"
                        .into(),
                ));
            }
        };
        let cluster = match (self.redis_cluster_nodes.0.is_empty(), &self.redis_url) {
            (true, _) => None,
            (false, None) => {
                return Err(ConfigError(
                    "REDIS_CLUSTER_NODES goes with REDIS_URL for the nodes' credentials (its host is not used): \
                     e.g. REDIS_CLUSTER_NODES=redis-0:6379,redis-1:6379,redis-2:6379 \
                     REDIS_URL=redis://:password@redis-cluster"
                        .into(),
                ));
            }
            (false, Some(RedisUrl(url))) => {
                let database = adapters_redis::RedisCacheConfig::new(url.as_str()).database();
                // (`rediss://` is refused with REDIS_URL itself: no TLS in this build.)
                let refusal = if !url.starts_with("redis://") || database.is_none() {
                    Some("a REDIS_URL other than redis://[user:password@]host[:port] (its credentials are the nodes')")
                } else if database != Some(0) {
                    Some("a REDIS_URL that selects a database other than 0 (a cluster has database 0 only)")
                } else if sentinel.is_some() {
                    Some("REDIS_SENTINELS (a cluster fails its masters over by itself)")
                } else if self.database_read_url.is_some() {
                    Some("DATABASE_READ_URL (the replica's read floors need one Redis server)")
                } else if self.near_cache_enabled == Some(true) {
                    Some("NEAR_CACHE_ENABLED=true (its freshness check needs one Redis server)")
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    return Err(ConfigError(format!("REDIS_CLUSTER_NODES does not go with {refusal}")));
                }
                Some(self.redis_cluster_nodes.0)
            }
        };
        let near_cache_enabled = self.near_cache_enabled.unwrap_or(cluster.is_none());
        let confirm_wait = self.cache_confirm_wait_ms.0;
        if confirm_wait > adapters_redis::config::MAX_CONFIRM_WAIT {
            return Err(ConfigError(format!(
                "CACHE_CONFIRM_WAIT_MS must be at most {}",
                adapters_redis::config::MAX_CONFIRM_WAIT.as_millis()
            )));
        }
        let extra_keys = self.cache_invalidate_extra_keys.0;
        let (cache, extra_invalidation_keys_without_redis) = match self.redis_url {
            Some(RedisUrl(url)) => (
                Some(CacheSettings {
                    url,
                    ttl: self.cache_ttl.0,
                    key_prefix: self.cache_key_prefix,
                    timeout: self.redis_timeout_ms.0,
                    extra_invalidation_keys: extra_keys,
                    extra_invalidation_delays: self.cache_invalidate_extra_delays.0,
                    confirm_wait,
                    near_cache_max_bytes: if near_cache_enabled && self.cache_enabled {
                        self.near_cache_max_bytes.0
                    } else {
                        0
                    },
                    sentinel,
                    cluster,
                }),
                Vec::new(),
            ),
            None => (None, extra_keys),
        };
        Ok(Settings {
            host: self.host.0,
            port: self.port.0,
            database: DatabaseSettings {
                url: self.database_url.map(|DatabaseUrl(url)| url),
                data_dir: self.data_dir,
                // One connection for the request, one for whatever it waits on.
                pool_size: self.database_pool_size.0.max(2),
                pool_timeout: self.database_pool_timeout_ms.0,
                statement_timeout: self.database_statement_timeout_ms.0,
                migrate_on_startup: self.migrate_on_startup,
                prepared_statements: self.database_prepared_statements,
                pooler: self.database_pooler,
                read_url: self.database_read_url.map(|DatabaseUrl(url)| url),
            },
            cache,
            extra_invalidation_keys_without_redis,
            events: EventsSettings {
                amqp_url: self.amqp_url.map(|AmqpUrl(url)| url),
                exchange: self.amqp_exchange.0,
                retention: self.events_retention.0,
                relay_batch: self.events_relay_batch.0,
            },
            cache_ttl: self.cache_ttl.0,
            cache_enabled: self.cache_enabled,
            auth: AuthConfig {
                secret_key,
                secret_key_generated,
                service_api_keys: self.service_api_keys.0,
                trust_internal_network: self.trust_internal_network,
                jwt_ttl: self.jwt_ttl.0,
                jwt_issuer: self.jwt_issuer,
                jwt_audience: self.jwt_audience,
            },
            limits: LimitSettings {
                login_max_failures: self.login_max_failures.0,
                login_failure_window: self.login_failure_window_seconds.0,
                login_account_max_failures: self.login_account_max_failures.0,
                login_slowed_interval: self.login_slowed_interval_seconds.0,
                login_known_address_for: Duration::from_secs(self.login_known_address_days.0.saturating_mul(86_400)),
                per_address: self.rate_limit_per_address.0,
                per_address_window: self.rate_limit_window_seconds.0,
                trusted_proxies: self.trusted_proxies.0,
            },
            idempotency_ttl: self.idempotency_ttl.0,
            max_body_bytes: self.max_body_bytes.0,
            compress_min_bytes: self.compress_min_bytes.0,
            request_body_timeout: self.request_body_timeout.0,
            metrics_token: self.metrics_token.map(|MetricsToken(token)| token),
            password_hash_concurrency: self.password_hash_concurrency.0,
            password_hash_queue_timeout: self.password_hash_queue_timeout_ms.0,
            workers: self.workers.0,
            background_threads: self.background_threads.0,
            log_format: self.log_format,
            log_level: self.log_level.0,
        })
    }
}

/// `config`'s error, phrased with the variable's name and without the value, which may be a
/// secret.
fn naming_the_variable(error: config::ConfigError) -> ConfigError {
    match error {
        config::ConfigError::Type { key: Some(key), expected, .. } => {
            ConfigError(format!("{} must be {expected}", key.to_ascii_uppercase()))
        }
        config::ConfigError::At { error, key: Some(key), .. } => {
            let reason = match *error {
                config::ConfigError::Message(reason) => reason,
                other => other.to_string(),
            };
            ConfigError(format!("{} {reason}", key.to_ascii_uppercase()))
        }
        other => ConfigError(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut variables: HashMap<String, String> = HashMap::from([
            ("DATABASE_URL".to_owned(), "postgres://localhost/db".to_owned()),
            ("SECRET_KEY".to_owned(), "0123456789abcdef0123456789abcdef".to_owned()),
        ]);
        variables.extend(pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())));
        Settings::from_map(variables)
    }

    #[test]
    fn defaults_follow_the_seed() {
        let settings = settings(&[]).unwrap();
        assert_eq!(settings.port, 3001);
        assert_eq!(settings.idempotency_ttl, Duration::from_secs(3600));
        assert!(settings.cache.is_none());
        assert!(settings.database.migrate_on_startup);
    }

    #[test]
    fn without_a_database_url_the_embedded_store_runs_with_a_generated_secret_key() {
        let settings = Settings::from_map(HashMap::new()).unwrap();
        assert_eq!(settings.database.url, None);
        assert_eq!(settings.database.data_dir, PathBuf::from("./data"));
        assert!(settings.auth.secret_key_generated);
        let again = Settings::from_map(HashMap::new()).unwrap();
        assert_ne!(
            secrecy::ExposeSecret::expose_secret(&settings.auth.secret_key),
            secrecy::ExposeSecret::expose_secret(&again.auth.secret_key)
        );
        // PostgreSQL requires an explicit key.
        let error = Settings::from_map(HashMap::from([("DATABASE_URL".into(), "postgres://h/db".into())])).unwrap_err();
        assert!(error.to_string().contains("SECRET_KEY"), "{error}");
    }

    #[test]
    fn a_redis_cluster_comes_with_a_redis_url_and_without_what_needs_one_server() {
        let redis = ("REDIS_URL", "redis://:secret@redis-cluster");
        let nodes = ("REDIS_CLUSTER_NODES", "r0:6379, r1:6380,10.0.0.3:6379");
        let cache = settings(&[redis, nodes]).unwrap().cache.unwrap();
        assert_eq!(
            cache.cluster.unwrap(),
            vec![("r0".to_owned(), 6379), ("r1".to_owned(), 6380), ("10.0.0.3".to_owned(), 6379)]
        );
        assert_eq!(cache.near_cache_max_bytes, 0, "no near-cache with a cluster unless asked (and then refused)");
        assert!(settings(&[redis]).unwrap().cache.unwrap().near_cache_max_bytes > 0);
        let database = ("DATABASE_URL", "postgres://db/users");
        let secret = ("SECRET_KEY", "0123456789abcdef0123456789abcdef");
        for (refused, extra) in [
            ("REDIS_URL", vec![nodes]),
            ("REDIS_SENTINELS", vec![redis, nodes, ("REDIS_SENTINELS", "s:26379"), ("REDIS_SENTINEL_MASTER", "m")]),
            (
                "DATABASE_READ_URL",
                vec![redis, nodes, database, secret, ("DATABASE_READ_URL", "postgres://replica/users")],
            ),
            ("NEAR_CACHE_ENABLED", vec![redis, nodes, ("NEAR_CACHE_ENABLED", "true")]),
        ] {
            let error = settings(&extra).unwrap_err().to_string();
            assert!(error.contains("REDIS_CLUSTER_NODES") && error.contains(refused), "{refused}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
        for (refused, url) in [
            ("redis://", "redis+unix:///run/redis.sock"),
            ("redis://", "redis://:secret@x:99999999"),
            ("database", "redis://:secret@x/3"),
        ] {
            let error = settings(&[("REDIS_URL", url), nodes]).unwrap_err().to_string();
            assert!(error.contains("REDIS_CLUSTER_NODES") && error.contains(refused), "{url}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
        for bad in ["r0", "r0:0", "r0:http", ":6379", "a b:1", " , ,"] {
            let error = settings(&[redis, ("REDIS_CLUSTER_NODES", bad)]).unwrap_err();
            assert!(error.to_string().contains("REDIS_CLUSTER_NODES"), "{bad}: {error}");
        }
    }

    #[test]
    fn sentinels_come_with_a_master_name_and_a_redis_url() {
        let redis = ("REDIS_URL", "redis://:secret-password@redis-master/2");
        let sentinels = ("REDIS_SENTINELS", "s1:26379, s2:26380,10.0.0.3:26379");
        let configured = settings(&[redis, sentinels, ("REDIS_SENTINEL_MASTER", "mymaster")]).unwrap();
        let sentinel = configured.cache.unwrap().sentinel.unwrap();
        assert_eq!(sentinel.master_name, "mymaster");
        assert_eq!(
            sentinel.sentinels,
            [("s1".to_owned(), 26379), ("s2".to_owned(), 26380), ("10.0.0.3".to_owned(), 26379)]
        );
        assert!(settings(&[redis]).unwrap().cache.unwrap().sentinel.is_none());
        for alone in [
            vec![redis, sentinels],
            vec![redis, ("REDIS_SENTINEL_MASTER", "mymaster")],
            vec![sentinels, ("REDIS_SENTINEL_MASTER", "m")],
        ] {
            let error = settings(&alone).unwrap_err().to_string();
            assert!(error.contains("REDIS_SENTINELS and REDIS_SENTINEL_MASTER go together"), "{error}");
        }
        for bad in ["s1", "s1:0", "s1:port", "s 1:26379", "s1:70000"] {
            let error = settings(&[redis, ("REDIS_SENTINELS", bad), ("REDIS_SENTINEL_MASTER", "m")]).unwrap_err();
            assert!(error.to_string().contains("REDIS_SENTINELS"), "{bad}: {error}");
        }
        let tls = settings(&[("REDIS_URL", "rediss://:pw@redis/0"), sentinels, ("REDIS_SENTINEL_MASTER", "m")]);
        assert!(tls.unwrap_err().to_string().contains("rediss://"), "TLS through Sentinel is refused, not dropped");
        // Nor alone, nor PostgreSQL's: this build speaks no TLS, so start-up must not promise it.
        let error = settings(&[("REDIS_URL", "rediss://:pw@redis/0")]).unwrap_err().to_string();
        assert!(error.contains("REDIS_URL") && error.contains("rediss://") && !error.contains(":pw@"), "{error}");
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://app:pw@db/users?application_name=x&sslmode={mode}");
            let secret = ("SECRET_KEY", "0123456789abcdef0123456789abcdef");
            let error = settings(&[("DATABASE_URL", &url), secret]).unwrap_err().to_string();
            assert!(error.contains("DATABASE_URL") && error.contains("sslmode") && !error.contains(":pw@"), "{error}");
        }
        let plain = ("DATABASE_URL", "postgres://app@db/users?sslmode=disable");
        assert!(settings(&[plain, ("SECRET_KEY", "0123456789abcdef0123456789abcdef")]).is_ok());
        let many = vec!["s:1"; 17].join(",");
        assert!(settings(&[redis, ("REDIS_SENTINELS", &many), ("REDIS_SENTINEL_MASTER", "m")]).is_err());
    }

    #[test]
    fn a_read_replica_needs_postgresql_and_the_redis_cache() {
        let url = ("DATABASE_READ_URL", "postgresql+asyncpg://reader@replica:5432/users");
        let redis = ("REDIS_URL", "redis://127.0.0.1:6379/0");
        let replicated = settings(&[url, redis]).unwrap();
        assert_eq!(replicated.database.read_url.as_deref(), Some("postgresql://reader@replica:5432/users"));
        for refused in [vec![url], vec![url, redis, ("CACHE_ENABLED", "false")]] {
            let error = settings(&refused).unwrap_err().to_string();
            assert!(error.contains("DATABASE_READ_URL needs DATABASE_URL and REDIS_URL"), "{error}");
        }
        let embedded =
            Settings::from_map(HashMap::from([(url.0.into(), url.1.into()), (redis.0.into(), redis.1.into())]));
        assert!(embedded.unwrap_err().to_string().contains("DATABASE_READ_URL needs"));
        let error = settings(&[("DATABASE_READ_URL", "mysql://replica/users"), redis]).unwrap_err().to_string();
        assert!(error.contains("DATABASE_READ_URL"), "{error}");
    }

    #[test]
    fn database_pooler_is_none_or_transaction_and_needs_postgresql() {
        assert_eq!(settings(&[]).unwrap().database.pooler, DatabasePooler::None);
        let pooled = settings(&[("DATABASE_POOLER", "transaction")]).unwrap();
        assert_eq!(pooled.database.pooler, DatabasePooler::Transaction);
        for unknown in ["session-ish", "Transaction", "session"] {
            let error = settings(&[("DATABASE_POOLER", unknown)]).unwrap_err().to_string();
            assert!(error.contains("DATABASE_POOLER must be `none` or `transaction`"), "{error}");
        }
        let embedded =
            Settings::from_map(HashMap::from([("DATABASE_POOLER".into(), "transaction".into())])).unwrap_err();
        assert!(embedded.to_string().contains("DATABASE_POOLER applies to PostgreSQL only"), "{embedded}");
    }

    #[test]
    fn the_seed_database_url_is_accepted() {
        let settings =
            settings(&[("DATABASE_URL", "postgresql+asyncpg://postgres:postgres@db:5432/user_service_db")]).unwrap();
        assert_eq!(settings.database.url.as_deref(), Some("postgresql://postgres:postgres@db:5432/user_service_db"));
    }

    #[test]
    fn the_cache_is_configured_by_redis_url() {
        let settings = settings(&[
            ("REDIS_URL", "redis://127.0.0.1:6379/0"),
            ("CACHE_TTL", "60"),
            ("CACHE_INVALIDATE_EXTRA_KEYS", "usercache:{id}, gateway:user:{id}"),
        ])
        .unwrap();
        let cache = settings.cache.unwrap();
        assert_eq!(cache.ttl, Duration::from_secs(60));
        assert_eq!(cache.timeout, Duration::from_millis(100));
        assert_eq!(cache.extra_invalidation_keys, vec!["usercache:{id}", "gateway:user:{id}"]);
        let error = settings_error(&[("REDIS_URL", "redis://x"), ("CACHE_INVALIDATE_EXTRA_KEYS", "fixed-key")]);
        assert!(error.contains("CACHE_INVALIDATE_EXTRA_KEYS"), "{error}");
        let error = settings_error(&[("CACHE_TTL", "-5")]);
        assert!(error.contains("CACHE_TTL"), "{error}");
    }

    #[test]
    fn service_keys_come_plain_with_every_scope_or_named_with_their_scopes() {
        use domain::auth::Scope;
        let plain = settings(&[("SERVICE_API_KEYS", "0123456789abcdef, fedcba9876543210")]).unwrap();
        let keys = &plain.auth.service_api_keys;
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|key| key.name.is_none() && key.scopes == Scopes::ALL));

        let named = settings(&[(
            "SERVICE_API_KEYS",
            "gateway:0123456789abcdef:users.read,devices.deactivate; admin:with:colons-0123456789:*",
        )])
        .unwrap();
        let keys = &named.auth.service_api_keys;
        assert_eq!(keys[0].name.as_deref(), Some("gateway"));
        assert_eq!(keys[0].scopes, Scopes::of(&[Scope::UsersRead, Scope::DevicesDeactivate]));
        assert_eq!(keys[1].name.as_deref(), Some("admin"));
        assert_eq!(secrecy::ExposeSecret::expose_secret(&keys[1].key), "with:colons-0123456789");
        assert_eq!(keys[1].scopes, Scopes::ALL);

        // Errors never echo any piece of an entry: a plain key with two ':' reads as one.
        let error = settings_error(&[("SERVICE_API_KEYS", "Zx9Q7mLpA2:hunter2-SECRET-part-0123:r8Tq5VvN3wYb")]);
        for piece in ["Zx9Q7mLpA2", "hunter2", "r8Tq5VvN3wYb"] {
            assert!(!error.contains(piece), "{error}");
        }
        assert!(error.contains("entry 1") && error.contains("users.read"), "{error}");
    }

    #[test]
    fn follow_up_deletions_default_to_250ms_1s_and_2s_and_can_be_switched_off() {
        let default = settings(&[("REDIS_URL", "redis://x")]).unwrap().cache.unwrap();
        let expected = [Duration::from_millis(250), Duration::from_secs(1), Duration::from_secs(2)];
        assert_eq!(default.extra_invalidation_delays, expected);
        let custom = settings(&[("REDIS_URL", "redis://x"), ("CACHE_INVALIDATE_EXTRA_DELAYS", "500ms, 3s")]).unwrap();
        let custom = custom.cache.unwrap().extra_invalidation_delays;
        assert_eq!(custom, [Duration::from_millis(500), Duration::from_secs(3)]);
        let none = settings(&[("REDIS_URL", "redis://x"), ("CACHE_INVALIDATE_EXTRA_DELAYS", "none")]).unwrap();
        assert!(none.cache.unwrap().extra_invalidation_delays.is_empty());
    }

    fn settings_error(pairs: &[(&str, &str)]) -> String {
        settings(pairs).unwrap_err().to_string()
    }

    #[test]
    fn the_effective_settings_are_shown_with_every_secret_masked() {
        let variables = HashMap::from([
            ("DATABASE_URL".to_owned(), "postgres://app:db-password-1234@db:5432/users".to_owned()),
            ("REDIS_URL".to_owned(), "redis://:redis-password-5678@cache:6379/0".to_owned()),
            ("SECRET_KEY".to_owned(), "secret-key-0123456789abcdef0123456789".to_owned()),
            (
                "SERVICE_API_KEYS".to_owned(),
                "gateway:service-key-0123456789:users.read;admin:admin-key-0123456789:*".to_owned(),
            ),
            ("METRICS_TOKEN".to_owned(), "metrics-token-0123456789".to_owned()),
            ("CACHE_TTL".to_owned(), " 60 ".to_owned()),
        ]);
        let shown = describe(Variables::read(variables).unwrap()).unwrap();
        for secret in [
            "db-password-1234",
            "redis-password-5678",
            "secret-key-0123",
            "service-key-0123",
            "admin-key-0123",
            "metrics-token",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in:\n{shown}");
        }
        for line in [
            "DATABASE_URL=postgres://app:***@db:5432/users",
            "REDIS_URL=redis://:***@cache:6379/0",
            "SECRET_KEY=********",
            "SERVICE_API_KEYS=gateway:********:users.read;admin:********:*",
            "METRICS_TOKEN=********",
            "CACHE_TTL=60",
            "PORT=3001",
            "REDIS_TIMEOUT_MS=100",
            "CACHE_INVALIDATE_EXTRA_DELAYS=250ms,1000ms,2000ms",
            "LOG_FORMAT=pretty",
        ] {
            assert!(shown.lines().any(|shown| shown == line), "{line} not in:\n{shown}");
        }
        // Invalid settings are not shown: the error is start-up's.
        let error = describe(
            Variables::read(HashMap::from([("DATABASE_URL".to_owned(), "postgres://h/db".to_owned())])).unwrap(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("SECRET_KEY is required"), "{error}");
    }

    #[test]
    fn only_upper_case_names_are_read() {
        assert_eq!(settings(&[("port", "1"), ("PORT", "2")]).unwrap().port, 2);
        // Not ours: even an invalid value under a lower-case name is ignored.
        assert!(settings(&[("cache_ttl", "0")]).is_ok());
    }

    #[test]
    fn invalid_values_name_their_variable() {
        for (name, value) in [
            ("PORT", "abc"),
            ("PORT", "70000"),
            ("DATABASE_URL", "mysql://x"),
            ("CACHE_TTL", "0"),
            ("MIGRATE_ON_STARTUP", "maybe"),
            ("LOG_FORMAT", "xml"),
            ("HOST", "not-an-ip"),
            ("REDIS_URL", "http://cache"),
            ("SECRET_KEY", "your_super_secret_key_here"),
            ("SECRET_KEY", "too-short"),
            ("SECRET_KEY", ""),
            ("SERVICE_API_KEYS", "short"),
            ("SERVICE_API_KEYS", "gateway:short:users.read"),
            ("SERVICE_API_KEYS", "gateway:0123456789abcdef:users.admin"),
            ("SERVICE_API_KEYS", "gate way:0123456789abcdef:*"),
            ("SERVICE_API_KEYS", "gateway:0123456789abcdef:*;gateway:fedcba9876543210:*"),
            ("SERVICE_API_KEYS", "a:0123456789abcdef:*;b:0123456789abcdef:users.read"),
            ("SERVICE_API_KEYS", "0123456789abcdef,gateway:fedcba9876543210:*"),
            ("CACHE_INVALIDATE_EXTRA_DELAYS", "1s,soon"),
            ("CACHE_INVALIDATE_EXTRA_DELAYS", "0ms"),
            ("CACHE_INVALIDATE_EXTRA_DELAYS", "11s"),
            ("CACHE_INVALIDATE_EXTRA_DELAYS", "1s,2s,3s,4s,5s,6s"),
            ("CACHE_CONFIRM_WAIT_MS", "0"),
            ("CACHE_CONFIRM_WAIT_MS", "10001"),
            ("NEAR_CACHE_MAX_BYTES", "0"),
            ("NEAR_CACHE_MAX_BYTES", "17179869185"),
            ("NEAR_CACHE_MAX_BYTES", "64MiB"),
            ("NEAR_CACHE_ENABLED", "maybe"),
            ("TRUST_INTERNAL_NETWORK", "sometimes"),
            ("TRUSTED_PROXIES", "10.0.0.0/99"),
            ("JWT_TTL", "0"),
            ("LOG_LEVEL", "loud=="),
            ("REQUEST_BODY_TIMEOUT", "0"),
            ("METRICS_TOKEN", "short"),
            ("LOGIN_ACCOUNT_MAX_FAILURES", "0"),
            ("LOGIN_SLOWED_INTERVAL_SECONDS", "soon"),
            ("LOGIN_KNOWN_ADDRESS_DAYS", "-1"),
            ("LOGIN_KNOWN_ADDRESS_DAYS", "3651"),
            ("IDEMPOTENCY_TTL", "18446744073709551615"),
            ("IDEMPOTENCY_TTL", "315360001"),
            ("CACHE_TTL", "true"),
            ("CACHE_TTL", "1e3"),
            ("JWT_TTL", "0.5"),
            ("REDIS_TIMEOUT_MS", "3600001"),
            ("WORKERS", "100000000"),
            ("BACKGROUND_THREADS", "0"),
            ("BACKGROUND_THREADS", "1025"),
            ("MAX_BODY_BYTES", "18446744073709551615"),
            ("COMPRESS_MIN_BYTES", "0"),
            ("COMPRESS_MIN_BYTES", "16777217"),
            ("DATABASE_POOL_SIZE", "1001"),
        ] {
            let error = settings(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name), "{error} should name {name}");
        }
    }
}
