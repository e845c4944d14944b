//! The rate-limit port: fixed-window counters for abuse limits (failed logins per account,
//! attempts per client address).
//!
//! Counters live in Redis when it is configured, in process otherwise. A counter store that
//! cannot answer returns [`RateLimitUnavailable`]; [`FallbackRateLimiter`] then counts in its
//! second store, so a dead Redis never disables the limits nor fails a request.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// How many events a key may count within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events allowed per window.
    pub limit: u32,
    /// The window's length.
    pub window: Duration,
}

/// What a counter says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Within the limit.
    Allowed,
    /// Over the limit until the window ends.
    Limited {
        /// How long until the window ends (at least one second).
        retry_after: Duration,
    },
}

/// The counter store cannot answer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit counters unavailable")]
pub struct RateLimitUnavailable;

/// Fixed-window counters keyed by strings such as `login-failures:<email>`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one event for `key` and says whether the count is within `limit`. The window
    /// starts with the key's first event.
    async fn hit(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitUnavailable>;

    /// Says whether `key` is already over `limit`, without counting.
    async fn check(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitUnavailable>;

    /// Forgets `key` (e.g. an account's failures after a successful login).
    async fn reset(&self, key: &str) -> Result<(), RateLimitUnavailable>;
}

/// Counts in `primary` (Redis, shared by all instances) and, when it cannot answer, in
/// `fallback` (in process), so that limits hold and requests succeed while Redis is down.
#[derive(Clone)]
pub struct FallbackRateLimiter {
    primary: Arc<dyn RateLimiter>,
    fallback: Arc<dyn RateLimiter>,
}

impl std::fmt::Debug for FallbackRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackRateLimiter").finish_non_exhaustive()
    }
}

impl FallbackRateLimiter {
    /// Counts in `primary`, else in `fallback`.
    pub fn new(primary: Arc<dyn RateLimiter>, fallback: Arc<dyn RateLimiter>) -> Self {
        Self { primary, fallback }
    }
}

#[async_trait]
impl RateLimiter for FallbackRateLimiter {
    async fn hit(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitUnavailable> {
        match self.primary.hit(key, limit).await {
            Ok(decision) => Ok(decision),
            Err(RateLimitUnavailable) => self.fallback.hit(key, limit).await,
        }
    }

    async fn check(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitUnavailable> {
        match self.primary.check(key, limit).await {
            Ok(decision) => Ok(decision),
            Err(RateLimitUnavailable) => self.fallback.check(key, limit).await,
        }
    }

    async fn reset(&self, key: &str) -> Result<(), RateLimitUnavailable> {
        // Forget everywhere: the key may have been counted in either store.
        let primary = self.primary.reset(key).await;
        let fallback = self.fallback.reset(key).await;
        primary.or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { limit: 3, window: Duration::from_secs(60) };

    #[test]
    fn an_unavailable_primary_counts_in_the_fallback() {
        let mut primary = MockRateLimiter::new();
        primary.expect_hit().returning(|_, _| Err(RateLimitUnavailable));
        let mut fallback = MockRateLimiter::new();
        fallback.expect_hit().times(1).returning(|_, _| Ok(RateDecision::Allowed));
        let limiter = FallbackRateLimiter::new(Arc::new(primary), Arc::new(fallback));
        assert_eq!(futures_executor::block_on(limiter.hit("k", LIMIT)), Ok(RateDecision::Allowed));
    }

    #[test]
    fn an_answering_primary_is_the_only_one_asked() {
        let mut primary = MockRateLimiter::new();
        let limited = RateDecision::Limited { retry_after: Duration::from_secs(5) };
        primary.expect_check().returning(move |_, _| Ok(limited));
        let mut fallback = MockRateLimiter::new();
        fallback.expect_check().never();
        let limiter = FallbackRateLimiter::new(Arc::new(primary), Arc::new(fallback));
        assert_eq!(futures_executor::block_on(limiter.check("k", LIMIT)), Ok(limited));
    }
}
