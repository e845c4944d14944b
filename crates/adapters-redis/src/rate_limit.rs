//! [`RedisRateLimiter`]: the domain's [`RateLimiter`] port as fixed-window counters in Redis,
//! shared by every instance of the service.
//!
//! A counter is one integer key, `{key_prefix}:rl:{key}`, whose expiry is the window: the
//! first hit creates it and sets the expiry, later hits only increment it, and Redis deletes
//! it when the window ends. What must not live here: the choice of keys and limits (the
//! use cases make it) or a fallback store (the domain's `FallbackRateLimiter` composes one).

use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use domain::rate_limit::{RateDecision, RateLimit, RateLimitUnavailable, RateLimiter};
use sha2::{Digest, Sha256};

use crate::config::{RedisCacheConfig, RedisCacheError};
use crate::connection::{Request, Role};
use crate::servers::Servers;

/// Keys longer than this (in bytes) are stored as their SHA-256, so that user text (an
/// email, a header value) cannot make Redis keys of any size.
const MAX_KEY_BYTES: usize = 200;

/// Marks a hashed key. Keys that start with it are hashed too, so that no key given in clear
/// can name the counter of a hashed one.
const HASHED: &str = "sha256:";

/// A [`RateLimiter`] on Redis. Cheap to clone; the clones share the connection and the breaker.
///
/// Thresholds, so that after `limit` counted events the next attempt is refused:
/// - [`hit`](RateLimiter::hit) counts, then answers `Limited` when the count is **above**
///   `limit` (the `limit + 1`-th event of a window is the first one refused);
/// - [`check`](RateLimiter::check) does not count and answers `Limited` when the count has
///   **reached** `limit` (it asks "may one more happen?").
///
/// `retry_after` is the rest of the window rounded up to whole seconds, at least one second.
/// A window is fixed: it starts at the key's first hit and later hits do not extend it, even
/// with another `limit.window`. Every failure (Redis down, slow, skipped by the breaker, or
/// holding a non-integer at the key) is `Err(RateLimitUnavailable)`. Needs Redis 7
/// (`PEXPIRE … NX`); an older server answers every `hit` with an error.
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Servers,
    prefix: String,
}

impl RedisRateLimiter {
    /// Builds the limiter from the cache's configuration (see [`RedisCacheConfig`] for the
    /// fields it uses), with its own connection and circuit breaker. Does not connect, so the
    /// service starts while Redis is down, and needs no Tokio runtime; its calls must run
    /// inside one.
    pub fn build(config: &RedisCacheConfig) -> Result<Self, RedisCacheError> {
        config.validate_connection()?;
        let servers = Servers::build(
            config,
            Role {
                name: "rate limiter",
                degraded: "its counters are unavailable until it answers again",
                identify_server: false,
            },
            None,
        )?;
        tracing::debug!(url = %servers.redacted_url(), prefix = %config.key_prefix, "Redis rate limiter configured");
        Ok(Self { inner: Arc::new(Inner { servers, prefix: config.key_prefix.clone() }) })
    }

    /// Whether the circuit breaker currently skips Redis (for metrics).
    pub fn is_bypassed(&self) -> bool {
        self.inner.servers.is_bypassed()
    }

    /// The Redis key of `key`'s counter.
    fn counter_key(&self, key: &str) -> String {
        counter_key(&self.inner.prefix, key)
    }
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("url", &self.inner.servers.redacted_url())
            .field("prefix", &self.inner.prefix)
            .field("connected", &self.inner.servers.is_connected())
            .field("bypassed", &self.inner.servers.is_bypassed())
            .finish()
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    /// `INCR`, `PEXPIRE … NX` and `PTTL` in one `MULTI`. `NX` sets the expiry only on a key
    /// that has none: a new one, or one left without expiry by anything else, which would
    /// otherwise count forever.
    async fn hit(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitUnavailable> {
        let key = self.counter_key(key);
        let mut pipeline = redis::pipe();
        pipeline
            .atomic()
            .cmd("INCR")
            .arg(&key)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(window_ms(limit.window))
            .arg("NX")
            .ignore()
            .cmd("PTTL")
            .arg(&key);
        let node = self.inner.servers.route(&key).await.ok_or(RateLimitUnavailable)?;
        let (count, ttl_ms) = node.run::<(i64, i64)>(Request::Pipeline(&pipeline)).await.ok_or(RateLimitUnavailable)?;
        Ok(decide(count > i64::from(limit.limit), ttl_ms, limit.window))
    }

    /// `GET` and `PTTL` in one `MULTI`, so that the count and the rest of its window belong
    /// together.
    async fn check(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitUnavailable> {
        let key = self.counter_key(key);
        let mut pipeline = redis::pipe();
        pipeline.atomic().cmd("GET").arg(&key).cmd("PTTL").arg(&key);
        let node = self.inner.servers.route(&key).await.ok_or(RateLimitUnavailable)?;
        let (count, ttl_ms) =
            node.run::<(Option<i64>, i64)>(Request::Pipeline(&pipeline)).await.ok_or(RateLimitUnavailable)?;
        Ok(decide(count.unwrap_or(0) >= i64::from(limit.limit), ttl_ms, limit.window))
    }

    async fn reset(&self, key: &str) -> Result<(), RateLimitUnavailable> {
        let key = self.counter_key(key);
        let node = self.inner.servers.route(&key).await.ok_or(RateLimitUnavailable)?;
        let mut command = redis::cmd("DEL");
        command.arg(key);
        node.run::<()>(Request::Command(&command)).await.ok_or(RateLimitUnavailable)
    }
}

/// `Limited` until the key expires when `over`. A key without expiry (`PTTL` -1) or already
/// gone (-2) is given the whole window.
fn decide(over: bool, ttl_ms: i64, window: Duration) -> RateDecision {
    if !over {
        return RateDecision::Allowed;
    }
    let remaining_ms = u64::try_from(ttl_ms).ok().filter(|&ms| ms > 0).unwrap_or_else(|| window_ms(window));
    RateDecision::Limited { retry_after: Duration::from_secs(remaining_ms.div_ceil(1_000).max(1)) }
}

/// The window in whole milliseconds, at least 1: Redis deletes a key given `PEXPIRE 0`.
fn window_ms(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `{prefix}:rl:{key}`, or `{prefix}:rl:sha256:{hex}` for a key longer than
/// [`MAX_KEY_BYTES`] or starting with [`HASHED`].
pub(crate) fn counter_key(prefix: &str, key: &str) -> String {
    if key.len() <= MAX_KEY_BYTES && !key.starts_with(HASHED) {
        return format!("{prefix}:rl:{key}");
    }
    let mut counter = format!("{prefix}:rl:{HASHED}");
    for byte in Sha256::digest(key.as_bytes()) {
        // Writing to a String cannot fail.
        let _ = write!(counter, "{byte:02x}");
    }
    counter
}
