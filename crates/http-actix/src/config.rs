//! Configuration from environment variables (and a `.env` file, loaded by `main`).
//!
//! Every variable has a documented default in `.env.example`; an invalid value stops the
//! service with a message that names the variable.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use domain::auth::{Scope, Scopes};
use secrecy::SecretString;
use sha2::Digest;

use crate::auth::client_address::Network;
use serde::Deserialize;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on (`HOST`).
    pub host: IpAddr,
    /// Port to listen on (`PORT`; 0 picks a free port, as the tests do).
    pub port: u16,
    /// PostgreSQL connection settings (`DATABASE_URL`, `DATABASE_POOL_*`).
    pub database: DatabaseSettings,
    /// The Redis cache (`REDIS_URL`, `CACHE_*`, `REDIS_*`); `None` caches in process.
    pub cache: Option<CacheSettings>,
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
    /// (`DATABASE_PREPARED_STATEMENTS`; false behind PgBouncer in transaction mode).
    pub prepared_statements: bool,
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
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable lines, for terminals.
    Pretty,
}

/// A configuration error; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// The raw variables, as `config` reads them (keys lower-cased).
#[derive(Debug, Deserialize)]
struct RawSettings {
    host: Option<String>,
    port: Option<String>,
    database_url: Option<String>,
    data_dir: Option<String>,
    database_pool_size: Option<String>,
    database_pool_timeout_ms: Option<String>,
    database_statement_timeout_ms: Option<String>,
    migrate_on_startup: Option<String>,
    database_prepared_statements: Option<String>,
    redis_url: Option<String>,
    redis_timeout_ms: Option<String>,
    cache_confirm_wait_ms: Option<String>,
    cache_key_prefix: Option<String>,
    cache_invalidate_extra_keys: Option<String>,
    cache_invalidate_extra_delays: Option<String>,
    secret_key: Option<String>,
    service_api_keys: Option<String>,
    trust_internal_network: Option<String>,
    jwt_ttl: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    login_max_failures: Option<String>,
    login_failure_window_seconds: Option<String>,
    login_account_max_failures: Option<String>,
    login_slowed_interval_seconds: Option<String>,
    login_known_address_days: Option<String>,
    rate_limit_per_address: Option<String>,
    rate_limit_window_seconds: Option<String>,
    trusted_proxies: Option<String>,
    idempotency_ttl: Option<String>,
    cache_ttl: Option<String>,
    cache_enabled: Option<String>,
    max_body_bytes: Option<String>,
    request_body_timeout: Option<String>,
    metrics_token: Option<String>,
    password_hash_concurrency: Option<String>,
    password_hash_queue_timeout_ms: Option<String>,
    workers: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(None)
    }

    /// Reads the given variables instead of the environment (for tests).
    pub fn from_map(variables: HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_source(Some(variables.into_iter().collect()))
    }

    fn from_source(source: Option<config::Map<String, String>>) -> Result<Self, ConfigError> {
        let raw: RawSettings = config::Config::builder()
            .add_source(config::Environment::default().source(source))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|error| ConfigError(error.to_string()))?;
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let cache = cache_settings(&raw)?;
        let extra_invalidation_keys_without_redis = match &cache {
            None => extra_keys(raw.cache_invalidate_extra_keys.clone())?,
            Some(_) => Vec::new(),
        };
        let cache_ttl = Duration::from_secs(positive("CACHE_TTL", raw.cache_ttl.clone(), 300)?);
        let cache_enabled = boolean("CACHE_ENABLED", raw.cache_enabled.clone(), true)?;
        let database_url = database_url(raw.database_url)?;
        let (secret_key, secret_key_generated) = secret_key(raw.secret_key, database_url.is_some())?;
        Ok(Self {
            host: parse_or("HOST", raw.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED))?,
            port: parse_or("PORT", raw.port, 3001)?,
            database: DatabaseSettings {
                url: database_url,
                data_dir: PathBuf::from(non_empty(raw.data_dir).unwrap_or_else(|| "./data".to_owned())),
                pool_size: positive("DATABASE_POOL_SIZE", raw.database_pool_size, 16)?.max(2),
                pool_timeout: millis("DATABASE_POOL_TIMEOUT_MS", raw.database_pool_timeout_ms, 2_000)?,
                statement_timeout: millis("DATABASE_STATEMENT_TIMEOUT_MS", raw.database_statement_timeout_ms, 5_000)?,
                migrate_on_startup: boolean("MIGRATE_ON_STARTUP", raw.migrate_on_startup, true)?,
                prepared_statements: boolean("DATABASE_PREPARED_STATEMENTS", raw.database_prepared_statements, true)?,
            },
            cache,
            extra_invalidation_keys_without_redis,
            cache_ttl,
            cache_enabled,
            auth: AuthConfig {
                secret_key,
                secret_key_generated,
                service_api_keys: service_keys(raw.service_api_keys)?,
                trust_internal_network: boolean("TRUST_INTERNAL_NETWORK", raw.trust_internal_network, false)?,
                jwt_ttl: Duration::from_secs(positive("JWT_TTL", raw.jwt_ttl, 3_600)?),
                jwt_issuer: non_empty(raw.jwt_issuer).unwrap_or_else(|| "user-service".to_owned()),
                jwt_audience: non_empty(raw.jwt_audience).unwrap_or_else(|| "user-service".to_owned()),
            },
            limits: LimitSettings {
                login_max_failures: positive("LOGIN_MAX_FAILURES", raw.login_max_failures, 10)?,
                login_failure_window: Duration::from_secs(positive(
                    "LOGIN_FAILURE_WINDOW_SECONDS",
                    raw.login_failure_window_seconds,
                    900,
                )?),
                login_account_max_failures: positive("LOGIN_ACCOUNT_MAX_FAILURES", raw.login_account_max_failures, 20)?,
                login_slowed_interval: Duration::from_secs(positive(
                    "LOGIN_SLOWED_INTERVAL_SECONDS",
                    raw.login_slowed_interval_seconds,
                    30,
                )?),
                login_known_address_for: Duration::from_secs(
                    positive("LOGIN_KNOWN_ADDRESS_DAYS", raw.login_known_address_days, 30_u64)?.saturating_mul(86_400),
                ),
                per_address: positive("RATE_LIMIT_PER_ADDRESS", raw.rate_limit_per_address, 20)?,
                per_address_window: Duration::from_secs(positive(
                    "RATE_LIMIT_WINDOW_SECONDS",
                    raw.rate_limit_window_seconds,
                    60,
                )?),
                trusted_proxies: trusted_proxies(raw.trusted_proxies)?,
            },
            idempotency_ttl: Duration::from_secs(positive("IDEMPOTENCY_TTL", raw.idempotency_ttl, 3_600)?),
            max_body_bytes: positive("MAX_BODY_BYTES", raw.max_body_bytes, 64 * 1024)?,
            request_body_timeout: Duration::from_secs(positive("REQUEST_BODY_TIMEOUT", raw.request_body_timeout, 10)?),
            metrics_token: metrics_token(raw.metrics_token)?,
            password_hash_concurrency: positive("PASSWORD_HASH_CONCURRENCY", raw.password_hash_concurrency, cpus)?,
            password_hash_queue_timeout: millis(
                "PASSWORD_HASH_QUEUE_TIMEOUT_MS",
                raw.password_hash_queue_timeout_ms,
                5_000,
            )?,
            workers: positive("WORKERS", raw.workers, cpus)?,
            log_format: match non_empty(raw.log_format).as_deref() {
                None | Some("pretty") => LogFormat::Pretty,
                Some("json") => LogFormat::Json,
                Some(_) => return Err(ConfigError("LOG_FORMAT must be json or pretty".into())),
            },
            log_level: log_level(raw.log_level)?,
        })
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|value| value.trim().to_owned()).filter(|value| !value.is_empty())
}

fn parse_or<T: std::str::FromStr>(name: &str, value: Option<String>, default: T) -> Result<T, ConfigError> {
    match non_empty(value) {
        None => Ok(default),
        Some(value) => value.parse().map_err(|_| ConfigError(format!("{name} has an invalid value"))),
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError> {
    let parsed = parse_or(name, value, default)?;
    if parsed <= T::default() {
        return Err(ConfigError(format!("{name} must be a positive integer")));
    }
    Ok(parsed)
}

fn millis(name: &str, value: Option<String>, default: u64) -> Result<Duration, ConfigError> {
    positive(name, value, default).map(Duration::from_millis)
}

fn boolean(name: &str, value: Option<String>, default: bool) -> Result<bool, ConfigError> {
    match non_empty(value).map(|value| value.to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(ConfigError(format!("{name} must be true or false"))),
    }
}

/// A tracing filter such as `info` or `warn,http_actix=debug`.
fn log_level(value: Option<String>) -> Result<String, ConfigError> {
    let level = non_empty(value).unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::EnvFilter::try_new(&level)
        .map_err(|_| ConfigError("LOG_LEVEL must be a level (error, warn, info, debug, trace) or a filter".into()))?;
    Ok(level)
}

/// The seed's example value, which must never sign real tokens.
const PLACEHOLDER_SECRET_KEY: &str = "your_super_secret_key_here";

/// `SECRET_KEY`: at least 32 bytes and not the seed's placeholder. Required with
/// PostgreSQL; the embedded default generates one (returned with `true`) when it is unset.
fn secret_key(value: Option<String>, postgres: bool) -> Result<(SecretString, bool), ConfigError> {
    let Some(key) = non_empty(value) else {
        if postgres {
            return Err(ConfigError(
                "SECRET_KEY is required with a PostgreSQL DATABASE_URL: at least 32 random bytes, \
                 e.g. `openssl rand -hex 32`"
                    .into(),
            ));
        }
        // Two v4 UUIDs: 244 random bits from the operating system's generator.
        let generated = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        return Ok((SecretString::from(generated), true));
    };
    if key == PLACEHOLDER_SECRET_KEY {
        return Err(ConfigError("SECRET_KEY must not be the example placeholder; generate a random one".into()));
    }
    if key.len() < 32 {
        return Err(ConfigError("SECRET_KEY must be at least 32 bytes".into()));
    }
    Ok((SecretString::from(key), false))
}

/// The shortest service key accepted.
const MIN_SERVICE_KEY_LENGTH: usize = 16;

/// `SERVICE_API_KEYS`, in one of two forms:
/// - plain: comma-separated keys, each with every scope (`KEY1,KEY2`);
/// - named: `;`-separated `name:key:scopes` entries, scopes being `*` or comma-separated
///   scope names (`gateway:KEY1:users.read,eligibility.read;admin:KEY2:*`).
///
/// A value with a `:` is read in the named form. Errors name the entry by position, never
/// by content: it holds a key.
fn service_keys(value: Option<String>) -> Result<Vec<ServiceKeyConfig>, ConfigError> {
    let Some(value) = non_empty(value) else {
        return Ok(Vec::new());
    };
    let keys: Vec<ServiceKeyConfig> = if value.contains(':') {
        value
            .split(';')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(index, entry)| named_service_key(index + 1, entry))
            .collect::<Result<_, _>>()?
    } else {
        value
            .split(',')
            .map(str::trim)
            .filter(|key| !key.is_empty())
            .map(|key| ServiceKeyConfig { name: None, key: SecretString::from(key.to_owned()), scopes: Scopes::ALL })
            .collect()
    };
    let mut names = std::collections::HashSet::new();
    let mut digests = std::collections::HashSet::new();
    for (index, key) in keys.iter().enumerate() {
        let secret = secrecy::ExposeSecret::expose_secret(&key.key);
        if secret.len() < MIN_SERVICE_KEY_LENGTH {
            return Err(ConfigError(format!(
                "SERVICE_API_KEYS entries must each be at least {MIN_SERVICE_KEY_LENGTH} characters (entry {})",
                index + 1
            )));
        }
        if key.name.as_ref().is_some_and(|name| !names.insert(name.clone())) {
            return Err(ConfigError(format!("SERVICE_API_KEYS names each caller once (entry {})", index + 1)));
        }
        if !digests.insert(sha2::Sha256::digest(secret.as_bytes())) {
            return Err(ConfigError(format!("SERVICE_API_KEYS holds the same key twice (entry {})", index + 1)));
        }
    }
    Ok(keys)
}

/// One `name:key:scopes` entry of `SERVICE_API_KEYS` (the key may itself contain `:`).
fn named_service_key(position: usize, entry: &str) -> Result<ServiceKeyConfig, ConfigError> {
    let malformed = || {
        ConfigError(format!(
            "SERVICE_API_KEYS entry {position} is not name:key:scopes (entries separated by ';', e.g. \
             gateway:KEY:users.read,eligibility.read;admin:KEY2:*)"
        ))
    };
    let (name, rest) = entry.split_once(':').ok_or_else(malformed)?;
    let (key, scopes) = rest.rsplit_once(':').ok_or_else(malformed)?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_.-".contains(&byte));
    if !valid_name {
        return Err(ConfigError(format!(
            "SERVICE_API_KEYS entry {position}: a caller's name is 1 to 64 letters, digits, '_', '.' or '-'"
        )));
    }
    // The error names the entry by position only: a plain key that happens to hold two ':'
    // is read in this form, and its pieces must not reach a log.
    let scopes = Scopes::parse(scopes).map_err(|_| {
        let known: Vec<&str> = Scope::ALL.iter().map(|scope| scope.name()).collect();
        ConfigError(format!(
            "SERVICE_API_KEYS entry {position}: the scopes after the last ':' must be * or comma-separated \
             names among {} (a plain key that contains ':' must be written name:key:*)",
            known.join(", ")
        ))
    })?;
    Ok(ServiceKeyConfig { name: Some(name.to_owned()), key: SecretString::from(key.trim().to_owned()), scopes })
}

/// `METRICS_TOKEN`: unset, or at least 16 characters.
fn metrics_token(value: Option<String>) -> Result<Option<SecretString>, ConfigError> {
    match non_empty(value) {
        None => Ok(None),
        Some(token) if token.len() < 16 => Err(ConfigError("METRICS_TOKEN must be at least 16 characters".into())),
        Some(token) => Ok(Some(SecretString::from(token))),
    }
}

/// Comma-separated addresses or CIDR ranges.
fn trusted_proxies(value: Option<String>) -> Result<Vec<Network>, ConfigError> {
    non_empty(value)
        .map(|value| {
            value
                .split(',')
                .filter(|entry| !entry.trim().is_empty())
                .map(|entry| {
                    Network::parse(entry).ok_or_else(|| {
                        ConfigError(format!("TRUSTED_PROXIES has an invalid address or range: {}", entry.trim()))
                    })
                })
                .collect()
        })
        .unwrap_or_else(|| Ok(Vec::new()))
}

/// The cache settings, checked even when `REDIS_URL` is unset so that a typo never hides.
fn cache_settings(raw: &RawSettings) -> Result<Option<CacheSettings>, ConfigError> {
    let settings = CacheSettings {
        url: String::new(),
        ttl: Duration::from_secs(positive("CACHE_TTL", raw.cache_ttl.clone(), 300)?),
        key_prefix: non_empty(raw.cache_key_prefix.clone()).unwrap_or_else(|| "user-service".to_owned()),
        timeout: millis("REDIS_TIMEOUT_MS", raw.redis_timeout_ms.clone(), 100)?,
        extra_invalidation_keys: extra_keys(raw.cache_invalidate_extra_keys.clone())?,
        extra_invalidation_delays: extra_delays(raw.cache_invalidate_extra_delays.clone())?,
        confirm_wait: millis("CACHE_CONFIRM_WAIT_MS", raw.cache_confirm_wait_ms.clone(), 500)?,
    };
    if settings.confirm_wait > adapters_redis::config::MAX_CONFIRM_WAIT {
        return Err(ConfigError("CACHE_CONFIRM_WAIT_MS must be at most 10000".into()));
    }
    match non_empty(raw.redis_url.clone()) {
        None => Ok(None),
        Some(url) => Ok(Some(CacheSettings { url: redis_url(url)?, ..settings })),
    }
}

/// Accepts `redis://`, `rediss://` and `unix://` URLs.
fn redis_url(url: String) -> Result<String, ConfigError> {
    if ["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|scheme| url.starts_with(scheme)) {
        Ok(url)
    } else {
        Err(ConfigError("REDIS_URL must start with redis:// or rediss://".into()))
    }
}

/// Reads comma-separated key templates, each containing `{id}`.
fn extra_keys(value: Option<String>) -> Result<Vec<String>, ConfigError> {
    let templates: Vec<String> = non_empty(value)
        .map(|value| value.split(',').map(str::trim).filter(|key| !key.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if templates.iter().any(|template| !template.contains("{id}")) {
        return Err(ConfigError("CACHE_INVALIDATE_EXTRA_KEYS templates must each contain {id}".into()));
    }
    Ok(templates)
}

/// Reads comma-separated delays such as `250ms,1s,2s` (at most 5, each above 0 and at most
/// 10 s); unset means the adapter's default, `none` means no follow-up deletions.
fn extra_delays(value: Option<String>) -> Result<Vec<Duration>, ConfigError> {
    use adapters_redis::config::{
        DEFAULT_EXTRA_INVALIDATION_DELAYS, MAX_EXTRA_INVALIDATION_DELAY, MAX_EXTRA_INVALIDATION_DELAYS,
    };
    let invalid = || {
        ConfigError(format!(
            "CACHE_INVALIDATE_EXTRA_DELAYS must be `none` or up to {MAX_EXTRA_INVALIDATION_DELAYS} comma-separated \
             delays such as 250ms or 2s, each above 0 and at most {} s",
            MAX_EXTRA_INVALIDATION_DELAY.as_secs()
        ))
    };
    let Some(value) = non_empty(value) else {
        return Ok(DEFAULT_EXTRA_INVALIDATION_DELAYS.to_vec());
    };
    if value.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let delays: Vec<Duration> = value
        .split(',')
        .map(|delay| {
            let delay = delay.trim();
            let (digits, unit) = match delay.strip_suffix("ms") {
                Some(digits) => (digits, Duration::from_millis(1)),
                None => (delay.strip_suffix('s').ok_or_else(invalid)?, Duration::from_secs(1)),
            };
            let count: u32 = digits.trim().parse().map_err(|_| invalid())?;
            Ok(unit * count)
        })
        .collect::<Result<_, ConfigError>>()?;
    if delays.len() > MAX_EXTRA_INVALIDATION_DELAYS
        || delays.iter().any(|delay| delay.is_zero() || *delay > MAX_EXTRA_INVALIDATION_DELAY)
    {
        return Err(invalid());
    }
    Ok(delays)
}

/// Accepts `postgres://`, `postgresql://` and the seed's `postgresql+asyncpg://`; unset
/// means the embedded SQLite store.
fn database_url(value: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(url) = non_empty(value) else {
        return Ok(None);
    };
    for driver_prefix in ["postgresql+asyncpg://", "postgres+asyncpg://"] {
        if let Some(rest) = url.strip_prefix(driver_prefix) {
            return Ok(Some(format!("postgresql://{rest}")));
        }
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Some(url))
    } else {
        Err(ConfigError("DATABASE_URL must start with postgres:// or postgresql://".into()))
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
            ("TRUST_INTERNAL_NETWORK", "sometimes"),
            ("TRUSTED_PROXIES", "10.0.0.0/99"),
            ("JWT_TTL", "0"),
            ("LOG_LEVEL", "loud=="),
            ("REQUEST_BODY_TIMEOUT", "0"),
            ("METRICS_TOKEN", "short"),
            ("LOGIN_ACCOUNT_MAX_FAILURES", "0"),
            ("LOGIN_SLOWED_INTERVAL_SECONDS", "soon"),
            ("LOGIN_KNOWN_ADDRESS_DAYS", "-1"),
        ] {
            let error = settings(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name), "{error} should name {name}");
        }
    }
}
