//! How the Redis cache and rate limiter are reached, named and timed, and the errors of
//! building them.
//!
//! Nothing here connects: a configuration is checked for shape only, so that the service
//! starts while Redis is down.

use std::fmt;
use std::time::Duration;

/// The key prefix used when none is configured.
pub const DEFAULT_KEY_PREFIX: &str = "user-service";
/// The format version used when none is configured.
pub const DEFAULT_FORMAT_VERSION: &str = "v1";
/// The placeholder that [`RedisCacheConfig::extra_invalidation_keys`] templates must contain.
pub const ID_PLACEHOLDER: &str = "{id}";
/// The follow-up deletions of downstream copies used when none are configured.
pub const DEFAULT_EXTRA_INVALIDATION_DELAYS: [Duration; 3] =
    [Duration::from_millis(250), Duration::from_secs(1), Duration::from_secs(2)];
/// The most follow-up delays, and the longest one: the schedule, and the wait for it at
/// shutdown, stay small.
pub const MAX_EXTRA_INVALIDATION_DELAYS: usize = 5;
/// The longest follow-up delay accepted.
pub const MAX_EXTRA_INVALIDATION_DELAY: Duration = Duration::from_secs(10);
/// The longest a change may wait for Redis to confirm its invalidation.
pub const MAX_CONFIRM_WAIT: Duration = Duration::from_secs(10);
/// The longest read lease: a change recorded in the ledger waits this long.
pub const MAX_READ_LEASE: Duration = Duration::from_secs(10);
/// The near-cache's size when none is configured: about 24,000 users of 1.2 KiB (each
/// weighed as twice its bytes plus its overhead: see `near`).
pub const DEFAULT_NEAR_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Everything [`RedisCache::build`](crate::RedisCache::build) needs. Start from
/// [`RedisCacheConfig::new`] and override fields.
///
/// [`RedisRateLimiter::build`](crate::RedisRateLimiter::build) takes the same configuration
/// and uses only `url`, `key_prefix`, `timeout`, `breaker_threshold` and `breaker_cooldown`;
/// its keys are `{key_prefix}:rl:{key}`.
///
/// Cache keys are `{key_prefix}:{format_version}:user:{id}` for an entry and
/// `{key_prefix}:gen:{id}` for a user's generation (in a cluster the id is in braces, a hash
/// tag). The generation is deliberately not
/// versioned: during a rolling deploy, a writer running one format version must also
/// invalidate the entries that instances running another version filled.
#[derive(Clone)]
pub struct RedisCacheConfig {
    /// The Redis URL (`redis://[user:password@]host:port[/db]`). Never logged with its password.
    pub url: String,
    /// The first segment of every key, so that several services can share one Redis.
    pub key_prefix: String,
    /// The format of the cached bytes; change it when the serialized representation changes
    /// so that new code never reads entries written by old code.
    pub format_version: String,
    /// How long an entry lives (`CACHE_TTL`).
    pub ttl: Duration,
    /// The bound on every call, connecting included.
    pub timeout: Duration,
    /// Further keys deleted on every invalidation, as templates containing `{id}`
    /// (e.g. `usercache:{id}`, the gateway's copy of our response).
    pub extra_invalidation_keys: Vec<String>,
    /// After each confirmed invalidation, the downstream copies are deleted again after each
    /// of these delays, undoing unguarded fills by clients that read before the change and
    /// write their copy after our deletion (`CACHE_INVALIDATE_EXTRA_DELAYS`). Empty: no
    /// follow-ups.
    pub extra_invalidation_delays: Vec<Duration>,
    /// How long a generation lives after an invalidation: far longer than any
    /// lookup-load-fill sequence, so that a reader's ticket can never outlive it.
    pub generation_ttl: Duration,
    /// Consecutive failures after which Redis is skipped.
    pub breaker_threshold: u32,
    /// How long Redis is skipped once the breaker opened; then one call probes it.
    pub breaker_cooldown: Duration,
    /// How often failed invalidations are retried.
    pub retry_interval: Duration,
    /// The most user ids kept for retry; beyond it the cache stops serving until the
    /// entries that may have missed their invalidation have expired.
    pub max_pending_invalidations: usize,
    /// How long a change waits for Redis to confirm its invalidation (calling it despite the
    /// breaker) before recording it in the invalidation ledger instead
    /// (`CACHE_CONFIRM_WAIT_MS`).
    pub confirm_wait: Duration,
    /// How long a reader trusts the cache after each read of the invalidation ledger; a
    /// change recorded there waits this long before it is acknowledged.
    pub read_lease: Duration,
    /// How often the ledger is read: the lease renewed, recorded invalidations replayed.
    pub lease_renewal: Duration,
    /// The most bytes of entries kept in process (the near-cache: see the crate's docs); 0
    /// turns it off (`NEAR_CACHE_MAX_BYTES`, `NEAR_CACHE_ENABLED`).
    pub near_cache_max_bytes: u64,
    /// Find the master through Redis Sentinel rather than at the URL's host (whose
    /// credentials and database still apply); `None`: the URL's server.
    pub sentinel: Option<SentinelConfig>,
    /// Some nodes of a Redis Cluster, as host and port (`REDIS_CLUSTER_NODES`): the cluster
    /// is asked which master serves each key, and the URL's credentials apply to every node
    /// (its host is not used); `None`: one server. Not with `sentinel`, a near-cache, or
    /// commit positions (a read replica).
    pub cluster: Option<Vec<(String, u16)>>,
}

/// Where Redis Sentinel is asked which server is the master (`REDIS_SENTINELS`,
/// `REDIS_SENTINEL_MASTER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The Sentinels, as host and port, asked in order.
    pub sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the master under.
    pub master_name: String,
}

/// The most Sentinels one configuration names.
pub const MAX_SENTINELS: usize = 16;

/// The most Redis Cluster nodes one configuration names (the others are learnt from them).
pub const MAX_CLUSTER_NODES: usize = 16;

impl RedisCacheConfig {
    /// Defaults: prefix `user-service`, format `v1`, TTL 300 s, 100 ms per call, no extra
    /// keys (follow-ups 250 ms, 1 s and 2 s after an invalidation when there are some),
    /// generations kept 24 h, breaker open after 3 failures for 1 s, retries every 200 ms, at
    /// most 100,000 pending ids; a change waits up to 500 ms for Redis before it is recorded
    /// in the ledger; leases of 1 s, renewed every 200 ms; a near-cache of 64 MiB.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            format_version: DEFAULT_FORMAT_VERSION.to_owned(),
            ttl: Duration::from_secs(300),
            timeout: Duration::from_millis(100),
            extra_invalidation_keys: Vec::new(),
            extra_invalidation_delays: DEFAULT_EXTRA_INVALIDATION_DELAYS.to_vec(),
            generation_ttl: Duration::from_secs(24 * 60 * 60),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(1),
            retry_interval: Duration::from_millis(200),
            max_pending_invalidations: 100_000,
            confirm_wait: Duration::from_millis(500),
            read_lease: Duration::from_secs(1),
            lease_renewal: Duration::from_millis(200),
            near_cache_max_bytes: DEFAULT_NEAR_CACHE_MAX_BYTES,
            sentinel: None,
            cluster: None,
        }
    }

    /// Checks the shape of the whole configuration (not whether Redis answers).
    pub(crate) fn validate(&self) -> Result<(), RedisCacheError> {
        self.validate_connection()?;
        if self.format_version.is_empty() || self.format_version.contains(':') {
            return Err(RedisCacheError::Invalid("the format version must be non-empty and contain no ':'"));
        }
        // Redis refuses `PX 0`, and a sub-millisecond TTL would be rounded to it.
        if self.ttl < Duration::from_millis(1) || self.generation_ttl < Duration::from_millis(1) {
            return Err(RedisCacheError::Invalid("the TTLs must be at least 1 ms"));
        }
        if self.generation_ttl <= self.ttl {
            return Err(RedisCacheError::Invalid("the generation TTL must be longer than the entry TTL"));
        }
        if self.retry_interval.is_zero() || self.max_pending_invalidations == 0 {
            return Err(RedisCacheError::Invalid(
                "the retry interval and the pending invalidation bound must be positive",
            ));
        }
        if let Some(template) = self.extra_invalidation_keys.iter().find(|template| !template.contains(ID_PLACEHOLDER))
        {
            // Without the placeholder every invalidation would delete one fixed key.
            return Err(RedisCacheError::TemplateWithoutId(template.clone()));
        }
        if self.cluster.is_some() && self.near_cache_max_bytes > 0 {
            // Its freshness check is one PING on one tracking connection (see `near`).
            return Err(RedisCacheError::Invalid("the near-cache is not supported with Redis Cluster: turn it off"));
        }
        if self.confirm_wait.is_zero() || self.confirm_wait > MAX_CONFIRM_WAIT {
            return Err(RedisCacheError::Invalid("the confirmation wait must be above 0 and at most 10 s"));
        }
        // A lease must outlast one renewal that fails, so that one slow read of the ledger
        // does not turn the cache off.
        if self.lease_renewal.is_zero() || self.lease_renewal * 2 > self.read_lease || self.read_lease > MAX_READ_LEASE
        {
            return Err(RedisCacheError::Invalid(
                "the lease renewal must be above 0 and at most half the lease, and the lease at most 10 s",
            ));
        }
        let delays = &self.extra_invalidation_delays;
        if delays.len() > MAX_EXTRA_INVALIDATION_DELAYS
            || delays.iter().any(|delay| delay.is_zero() || *delay > MAX_EXTRA_INVALIDATION_DELAY)
        {
            return Err(RedisCacheError::Invalid("at most 5 follow-up delays, each above 0 and at most 10 s"));
        }
        Ok(())
    }

    /// Checks the settings every user of the connection needs: the prefix, the timeout and
    /// the breaker.
    pub(crate) fn validate_connection(&self) -> Result<(), RedisCacheError> {
        if self.key_prefix.is_empty() {
            return Err(RedisCacheError::Invalid("the key prefix must not be empty"));
        }
        if self.timeout.is_zero() || self.breaker_cooldown.is_zero() {
            return Err(RedisCacheError::Invalid("the timeout and the breaker cooldown must be positive"));
        }
        if self.breaker_threshold == 0 {
            return Err(RedisCacheError::Invalid("the breaker threshold must be positive"));
        }
        if let Some(sentinel) = &self.sentinel
            && (sentinel.sentinels.is_empty()
                || sentinel.sentinels.len() > MAX_SENTINELS
                || sentinel.master_name.is_empty()
                || sentinel.sentinels.iter().any(|(host, port)| host.is_empty() || *port == 0))
        {
            return Err(RedisCacheError::Invalid(
                "Sentinel needs 1 to 16 sentinels, each a host and a port, and the master's name",
            ));
        }
        if let Some(nodes) = &self.cluster {
            if nodes.is_empty()
                || nodes.len() > MAX_CLUSTER_NODES
                || nodes.iter().any(|(host, port)| host.is_empty() || *port == 0)
            {
                return Err(RedisCacheError::Invalid("Redis Cluster needs 1 to 16 nodes, each a host and a port"));
            }
            if self.sentinel.is_some() {
                return Err(RedisCacheError::Invalid("Redis Cluster and Sentinel exclude each other"));
            }
            match self.database() {
                None => return Err(RedisCacheError::InvalidUrl),
                Some(0) => {}
                Some(_) => {
                    return Err(RedisCacheError::Invalid(
                        "Redis Cluster has database 0 only: the URL must not select another",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The database number the URL selects (0 when it names none), or `None` when the URL
    /// does not parse. Downstream copies are deleted in this database only.
    pub fn database(&self) -> Option<i64> {
        redis::IntoConnectionInfo::into_connection_info(self.url.as_str()).ok().map(|info| info.redis_settings().db())
    }

    /// The URL with its password (or a lone user-info part) replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for RedisCacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheConfig")
            .field("url", &self.redacted_url())
            .field("sentinel", &self.sentinel)
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .field("format_version", &self.format_version)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .field("extra_invalidation_keys", &self.extra_invalidation_keys)
            .field("extra_invalidation_delays", &self.extra_invalidation_delays)
            .field("generation_ttl", &self.generation_ttl)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("retry_interval", &self.retry_interval)
            .field("max_pending_invalidations", &self.max_pending_invalidations)
            .field("confirm_wait", &self.confirm_wait)
            .field("read_lease", &self.read_lease)
            .field("lease_renewal", &self.lease_renewal)
            .field("near_cache_max_bytes", &self.near_cache_max_bytes)
            .finish()
    }
}

/// Why a [`RedisCache`](crate::RedisCache) or a [`RedisRateLimiter`](crate::RedisRateLimiter)
/// could not be built. Never contains the URL.
#[derive(Debug)]
pub enum RedisCacheError {
    /// The URL does not parse as a Redis URL.
    InvalidUrl,
    /// An extra invalidation key template lacks `{id}`.
    TemplateWithoutId(String),
    /// Another setting is out of range.
    Invalid(&'static str),
    /// Built outside a Tokio runtime (the retry task needs one).
    NoRuntime,
}

impl fmt::Display for RedisCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl => f.write_str("the Redis URL is not valid (expected redis://host:port)"),
            Self::TemplateWithoutId(template) => {
                write!(f, "the extra invalidation key template {template:?} does not contain {ID_PLACEHOLDER}")
            }
            Self::Invalid(reason) => f.write_str(reason),
            Self::NoRuntime => f.write_str("the Redis cache must be built inside a Tokio runtime"),
        }
    }
}

impl std::error::Error for RedisCacheError {}

/// Replaces the secrets of a connection URL (Redis or PostgreSQL) with `***`, erring on the
/// side of hiding too much, since drivers read URLs differently:
/// - everything between the scheme and the last `@`, but for a user name before a `:`
///   (`redis://user:***@host`; `redis://***@host` without a `:`, as some clients take a
///   lone user info as the password): tokio-postgres ends the user info at the first `@`
///   anywhere, so a password may hold `/`, `?` or `#`;
/// - without an `@`, what follows a `:` of the host part unless it is a port (digits): a
///   URL that lost its `@` (`amqp://user:password`) keeps its password in that place;
/// - the value of every `password` or `pass` query parameter, its name percent-decoded as
///   the drivers decode it, up to the next `&` (a `#` may belong to the value).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|index| index + 3) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let (user_info, rest) = match rest.rfind('@') {
        Some(at) => {
            let masked = match rest[..at].split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            (masked, &rest[at..])
        }
        None => return redact_url_without_user_info(scheme, rest),
    };
    redact_query(&format!("{scheme}{user_info}"), rest)
}

/// [`redact_url`] of a URL without `@`: a `:` in the host part not followed by a port (digits
/// only) may be a password's.
fn redact_url_without_user_info(scheme: &str, rest: &str) -> String {
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(host_end);
    let unbracketed = host.rsplit_once(']').map_or(host, |(_, after)| after);
    match unbracketed.rsplit_once(':') {
        Some((_, port)) if !port.bytes().all(|byte| byte.is_ascii_digit()) => {
            let kept = &host[..host.len() - port.len()];
            format!("{scheme}{kept}***")
        }
        _ => redact_query(&format!("{scheme}{host}"), tail),
    }
}

/// `before` followed by `tail`, with [`redact_url`]'s masking of `password` query parameters.
fn redact_query(before: &str, tail: &str) -> String {
    let Some((before_query, query)) = tail.split_once('?') else {
        return format!("{before}{tail}");
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if ["password", "pass"].contains(&percent_decoded(name).to_ascii_lowercase().as_str()) => {
                format!("{name}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{before}{before_query}?{}", pairs.join("&"))
}

/// `text` with its `%XX` escapes decoded (an invalid escape is kept as it is).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 3).and_then(|hex| std::str::from_utf8(hex).ok());
        match (bytes[index], escape.and_then(|hex| u8::from_str_radix(hex, 16).ok())) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                index += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
