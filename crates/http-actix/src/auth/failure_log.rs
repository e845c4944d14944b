//! [`AuthFailureLog`]: one warning per client address and reason per minute about refused
//! credentials.

use std::time::Duration;

use adapters_memory::MemoryRateLimiter;
use domain::rate_limit::{RateDecision, RateLimit, RateLimiter};

/// Throttles the warnings about refused credentials: the first per client address and
/// reason in each minute is logged, so that an operator sees every kind of seam between a
/// client and this service, and a hostile caller cannot flood the log.
#[derive(Debug)]
pub struct AuthFailureLog {
    seen: MemoryRateLimiter,
}

/// One warning per client address and reason in this window.
const AUTH_FAILURE_LOG_WINDOW: Duration = Duration::from_secs(60);

/// The most (address, reason) pairs remembered; beyond, the oldest windows are forgotten
/// early and their next failure is logged again.
const AUTH_FAILURE_LOG_MAX_KEYS: usize = 10_000;

impl Default for AuthFailureLog {
    fn default() -> Self {
        Self { seen: MemoryRateLimiter::with_max_keys(AUTH_FAILURE_LOG_MAX_KEYS) }
    }
}

impl AuthFailureLog {
    /// Whether this is the first failure for `reason` from `address` in the current window.
    pub async fn first_in_window(&self, address: &str, reason: &str) -> bool {
        let once = RateLimit { limit: 1, window: AUTH_FAILURE_LOG_WINDOW };
        matches!(self.seen.hit(&format!("{address}|{reason}"), once).await, Ok(RateDecision::Allowed))
    }
}
