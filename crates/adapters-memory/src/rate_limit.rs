//! [`MemoryRateLimiter`]: the domain's [`RateLimiter`] port as fixed-window counters in a
//! map of this process, with the semantics of the Redis one.
//!
//! Memory is bounded twice: keys longer than 200 bytes are stored as their SHA-256, and the
//! map holds at most a configured number of keys. Expired windows are swept every 1,024 new
//! keys and whenever the map is full; a map full of live windows then evicts the tenth that
//! ends soonest (the oldest windows). What must not live here: I/O, or any state shared with
//! other instances of the service.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::rate_limit::{RateDecision, RateLimit, RateLimitUnavailable, RateLimiter};
use sha2::{Digest, Sha256};

/// The most keys a [`MemoryRateLimiter::new`] tracks.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Keys longer than this (in bytes) are stored as their SHA-256.
const MAX_KEY_BYTES: usize = 200;

/// Marks a hashed key. Keys that start with it are hashed too, so that no key given in clear
/// can name the counter of a hashed one.
const HASHED: &str = "sha256:";

/// New keys between two sweeps of expired windows: sweeping is linear in the map's size, so
/// it is amortized over many insertions rather than done on each.
const SWEEP_EVERY: usize = 1_024;

/// The longest window honoured; longer ones are cut to it, so that `now + window` cannot
/// overflow.
const MAX_WINDOW: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Where a [`MemoryRateLimiter`] reads the time.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// A [`RateLimiter`] in process memory. Never returns an error.
///
/// Thresholds, so that after `limit` counted events the next attempt is refused:
/// - [`hit`](RateLimiter::hit) counts, then answers `Limited` when the count is **above**
///   `limit` (the `limit + 1`-th event of a window is the first one refused);
/// - [`check`](RateLimiter::check) does not count and answers `Limited` when the count has
///   **reached** `limit` (it asks "may one more happen?").
///
/// `retry_after` is the rest of the window rounded up to whole seconds, at least one second.
/// A window is fixed: it starts at the key's first hit and later hits do not extend it, even
/// with another `limit.window`.
///
/// When the key bound is reached, the windows that end soonest are forgotten: a flood of new
/// keys can thus reset older counters early. Size the bound well above the keys one window
/// sees in normal traffic.
pub struct MemoryRateLimiter {
    state: Mutex<State>,
    max_keys: usize,
    clock: Clock,
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<Box<str>, Window>,
    /// New keys since expired windows were last swept.
    inserted_since_sweep: usize,
}

/// One key's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    count: u32,
    ends: Instant,
}

impl MemoryRateLimiter {
    /// A limiter tracking at most [`DEFAULT_MAX_KEYS`] keys, on the system clock.
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    /// A limiter tracking at most `max_keys` keys (at least 1), on the system clock.
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self { state: Mutex::new(State::default()), max_keys: max_keys.max(1), clock: Arc::new(Instant::now) }
    }

    /// The same limiter reading the time from `clock`, so that tests can move time on
    /// without sleeping.
    #[must_use]
    pub fn with_clock(self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        Self { clock: Arc::new(clock), ..self }
    }

    /// How many keys are held, expired windows not yet swept included (for metrics).
    pub fn tracked_keys(&self) -> usize {
        self.lock().windows.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the map valid (a counter and an instant): poisoning carries no
        // meaning.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimiter")
            .field("tracked_keys", &self.tracked_keys())
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn hit(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitUnavailable> {
        let now = (self.clock)();
        let key = stored_key(key);
        let fresh = Window { count: 1, ends: now + limit.window.min(MAX_WINDOW) };
        let mut state = self.lock();
        let window = match state.windows.get_mut(key.as_ref()) {
            Some(window) if now < window.ends => {
                window.count = window.count.saturating_add(1);
                *window
            }
            Some(expired) => {
                *expired = fresh;
                fresh
            }
            None => {
                state.make_room(now, self.max_keys);
                state.windows.insert(key.into_owned().into_boxed_str(), fresh);
                fresh
            }
        };
        Ok(decide(window.count > limit.limit, window.ends.saturating_duration_since(now)))
    }

    async fn check(&self, key: &str, limit: RateLimit) -> Result<RateDecision, RateLimitUnavailable> {
        let now = (self.clock)();
        let key = stored_key(key);
        let state = self.lock();
        let (count, remaining) = match state.windows.get(key.as_ref()) {
            Some(window) if now < window.ends => (window.count, window.ends.saturating_duration_since(now)),
            // As in Redis, a key without a window is given a whole one.
            _ => (0, limit.window.min(MAX_WINDOW)),
        };
        Ok(decide(count >= limit.limit, remaining))
    }

    async fn reset(&self, key: &str) -> Result<(), RateLimitUnavailable> {
        self.lock().windows.remove(stored_key(key).as_ref());
        Ok(())
    }
}

impl State {
    /// Sweeps expired windows when due, then evicts the windows that end soonest if the map
    /// is still full, so that one more key fits.
    fn make_room(&mut self, now: Instant, max_keys: usize) {
        self.inserted_since_sweep += 1;
        let full = self.windows.len() >= max_keys;
        if full || self.inserted_since_sweep >= SWEEP_EVERY {
            self.windows.retain(|_, window| now < window.ends);
            self.inserted_since_sweep = 0;
        }
        if self.windows.len() >= max_keys {
            // A tenth at once, so that a full map pays the linear scan once per many keys.
            let evicted = (max_keys / 10).max(1);
            let mut ends: Vec<Instant> = self.windows.values().map(|window| window.ends).collect();
            let (_, &mut cutoff, _) = ends.select_nth_unstable(evicted - 1);
            self.windows.retain(|_, window| window.ends > cutoff);
        }
    }
}

/// `Limited` for the rest of the window, rounded up to whole seconds and at least one, when
/// `over`.
fn decide(over: bool, remaining: Duration) -> RateDecision {
    if !over {
        return RateDecision::Allowed;
    }
    let seconds = remaining.as_secs().saturating_add(u64::from(remaining.subsec_nanos() > 0));
    RateDecision::Limited { retry_after: Duration::from_secs(seconds.max(1)) }
}

/// `key` itself, or `sha256:{hex}` for a key longer than [`MAX_KEY_BYTES`] or starting with
/// [`HASHED`].
fn stored_key(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_KEY_BYTES && !key.starts_with(HASHED) {
        return Cow::Borrowed(key);
    }
    let mut stored = String::with_capacity(HASHED.len() + 64);
    stored.push_str(HASHED);
    for byte in Sha256::digest(key.as_bytes()) {
        // Writing to a String cannot fail.
        let _ = write!(stored, "{byte:02x}");
    }
    Cow::Owned(stored)
}

#[cfg(test)]
mod tests {
    use crate::manual_clock::ManualClock;

    use super::*;

    crate::rate_limiter_contract_tests!(MemoryRateLimiter::new());

    /// A limiter reading `clock`.
    fn limiter_on(clock: &ManualClock, max_keys: usize) -> MemoryRateLimiter {
        let clock = clock.clone();
        MemoryRateLimiter::with_max_keys(max_keys).with_clock(move || clock.now())
    }

    const MINUTE: RateLimit = RateLimit { limit: 2, window: Duration::from_secs(60) };

    #[tokio::test]
    async fn retry_after_counts_down_with_the_window_and_the_key_starts_over_when_it_ends() {
        let clock = ManualClock::new();
        let limiter = limiter_on(&clock, DEFAULT_MAX_KEYS);
        for _ in 0..2 {
            assert_eq!(limiter.hit("k", MINUTE).await, Ok(RateDecision::Allowed));
        }
        clock.advance(Duration::from_millis(44_500));
        let limited = RateDecision::Limited { retry_after: Duration::from_secs(16) };
        assert_eq!(limiter.hit("k", MINUTE).await, Ok(limited), "15.5 s left, rounded up");
        assert_eq!(limiter.check("k", MINUTE).await, Ok(limited));

        clock.advance(Duration::from_millis(15_500));
        assert_eq!(limiter.check("k", MINUTE).await, Ok(RateDecision::Allowed), "the window ended");
        assert_eq!(limiter.hit("k", MINUTE).await, Ok(RateDecision::Allowed));
        assert_eq!(limiter.tracked_keys(), 1, "the expired window was replaced in place");
    }

    #[tokio::test]
    async fn expired_windows_are_swept_as_new_keys_arrive() {
        let clock = ManualClock::new();
        let limiter = limiter_on(&clock, DEFAULT_MAX_KEYS);
        for index in 0..SWEEP_EVERY {
            limiter.hit(&format!("old-{index}"), MINUTE).await.expect("never fails");
        }
        clock.advance(Duration::from_secs(61));
        for index in 0..SWEEP_EVERY {
            limiter.hit(&format!("new-{index}"), MINUTE).await.expect("never fails");
        }
        assert!(
            limiter.tracked_keys() <= SWEEP_EVERY + 1,
            "{} keys held: the expired ones were not dropped",
            limiter.tracked_keys()
        );
    }

    #[tokio::test]
    async fn a_full_map_forgets_the_windows_that_end_soonest_and_counts_the_newest() {
        let clock = ManualClock::new();
        let limiter = limiter_on(&clock, 100);
        let one = RateLimit { limit: 1, window: Duration::from_secs(60) };
        for index in 0..1_000 {
            limiter.hit(&format!("key-{index}"), one).await.expect("never fails");
            clock.advance(Duration::from_millis(10));
        }
        assert!(limiter.tracked_keys() <= 100, "{} keys held", limiter.tracked_keys());
        let newest = "key-999";
        assert!(matches!(limiter.check(newest, one).await, Ok(RateDecision::Limited { .. })), "still counted");
        assert_eq!(limiter.check("key-0", one).await, Ok(RateDecision::Allowed), "the oldest was forgotten");
    }

    #[tokio::test]
    async fn long_keys_are_stored_as_their_hash() {
        let limiter = MemoryRateLimiter::new();
        let long = "x".repeat(10_000);
        limiter.hit(&long, MINUTE).await.expect("never fails");
        let state = limiter.lock();
        let stored: Vec<&str> = state.windows.keys().map(AsRef::as_ref).collect();
        assert_eq!(stored.len(), 1);
        assert!(stored[0].starts_with(HASHED) && stored[0].len() == HASHED.len() + 64, "{}", stored[0]);
    }

    #[test]
    fn short_keys_are_stored_as_given_unless_they_look_hashed() {
        assert_eq!(stored_key("login-failures:ada@example.com"), "login-failures:ada@example.com");
        assert_eq!(stored_key(&"y".repeat(MAX_KEY_BYTES)), "y".repeat(MAX_KEY_BYTES));
        assert_ne!(stored_key("sha256:abc"), "sha256:abc");
        assert_ne!(stored_key(&"y".repeat(MAX_KEY_BYTES + 1)), stored_key(&"y".repeat(MAX_KEY_BYTES + 2)));
    }

    #[tokio::test]
    async fn a_huge_window_is_capped_instead_of_overflowing() {
        let limiter = MemoryRateLimiter::new();
        let forever = RateLimit { limit: 0, window: Duration::MAX };
        assert!(matches!(limiter.hit("k", forever).await, Ok(RateDecision::Limited { .. })));
    }
}
