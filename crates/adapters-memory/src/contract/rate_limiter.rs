//! The contract of the [`RateLimiter`] port: fixed-window counters, `hit` and `check`
//! thresholds, `retry_after` rounding, resets and key independence.
//!
//! [`rate_limiter_contract_tests!`](crate::rate_limiter_contract_tests) turns every case into
//! a test. Each case takes the limiter and a key prefix that isolates it from other cases
//! sharing a store. Every window is at most 5 s, so the counters a case leaves in a shared
//! store expire by themselves.

use std::time::Duration;

use domain::rate_limit::{RateDecision, RateLimit, RateLimitUnavailable, RateLimiter};

/// Generates one `#[tokio::test]` per rate-limiter contract case, in a module named
/// `rate_limiter_contract` of the calling module. `$limiter` is evaluated in each test,
/// inside the runtime, with the calling module's items in scope (`use super::*`); it must
/// give a value implementing [`RateLimiter`]. The calling crate needs `tokio` (with
/// `macros` and `rt-multi-thread`) among its dependencies.
///
/// ```ignore
/// adapters_memory::rate_limiter_contract_tests!(RedisRateLimiter::build(&config()).expect("build"));
/// ```
#[macro_export]
macro_rules! rate_limiter_contract_tests {
    ($limiter:expr) => {
        $crate::rate_limiter_contract_tests!(@cases $limiter;
            hits_within_the_limit_are_allowed_and_the_next_is_limited,
            retry_after_is_the_rest_of_the_window_rounded_up_to_whole_seconds,
            a_limit_of_zero_refuses_every_attempt,
            check_is_allowed_below_the_limit_and_limited_at_it_without_counting,
            reset_forgets_the_key,
            keys_are_independent,
            after_the_window_the_key_starts_over,
            later_hits_do_not_extend_the_window,
        );
    };
    (@cases $limiter:expr; $($case:ident),+ $(,)?) => {
        mod rate_limiter_contract {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    let limiter = $limiter;
                    $crate::contract::rate_limiter::$case(&limiter, concat!("contract:", stringify!($case))).await;
                }
            )+
        }
    };
}

/// The longest window of the suite.
const WINDOW: Duration = Duration::from_secs(5);

/// The `retry_after` of a `Limited` answer; panics with `what` on any other answer.
fn retry_after(answer: Result<RateDecision, RateLimitUnavailable>, what: &str) -> Duration {
    match answer {
        Ok(RateDecision::Limited { retry_after }) => retry_after,
        other => panic!("{what}: expected Limited, got {other:?}"),
    }
}

/// Panics unless `retry_after` is within `(0, window]`, the window rounded up to whole seconds.
fn assert_within_window(retry_after: Duration, window: Duration, what: &str) {
    let whole_window = Duration::from_secs(window.as_secs() + u64::from(window.subsec_nanos() > 0));
    assert!(
        retry_after >= Duration::from_secs(1) && retry_after <= whole_window,
        "{what}: retry_after {retry_after:?} is not within 1 s..={whole_window:?}"
    );
}

/// The first `limit` hits of a window are allowed; the next ones are limited until the window
/// ends.
pub async fn hits_within_the_limit_are_allowed_and_the_next_is_limited(limiter: &dyn RateLimiter, prefix: &str) {
    let key = format!("{prefix}:login-failures:ada@example.com");
    let limit = RateLimit { limit: 3, window: WINDOW };
    for attempt in 1..=3 {
        assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed), "hit {attempt} of a limit of 3");
    }
    for attempt in 4..=5 {
        let what = format!("hit {attempt} of a limit of 3");
        assert_within_window(retry_after(limiter.hit(&key, limit).await, &what), WINDOW, &what);
    }
}

/// `retry_after` is the rest of the window rounded up to whole seconds, and at least 1 s.
pub async fn retry_after_is_the_rest_of_the_window_rounded_up_to_whole_seconds(
    limiter: &dyn RateLimiter,
    prefix: &str,
) {
    // 1.9 s leaves 2 s after rounding up as long as the two calls take under 0.9 s.
    let key = format!("{prefix}:rounded");
    let limit = RateLimit { limit: 1, window: Duration::from_millis(1_900) };
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed));
    let limited = Ok(RateDecision::Limited { retry_after: Duration::from_secs(2) });
    assert_eq!(limiter.hit(&key, limit).await, limited, "hit: 1.9 s left, rounded up");
    assert_eq!(limiter.check(&key, limit).await, limited, "check: 1.9 s left, rounded up");

    let key = format!("{prefix}:short");
    let limit = RateLimit { limit: 1, window: Duration::from_millis(200) };
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed));
    let limited = Ok(RateDecision::Limited { retry_after: Duration::from_secs(1) });
    assert_eq!(limiter.hit(&key, limit).await, limited, "a window under 1 s still says 1 s");
}

/// A limit of zero refuses even the first attempt.
pub async fn a_limit_of_zero_refuses_every_attempt(limiter: &dyn RateLimiter, prefix: &str) {
    let key = format!("{prefix}:closed");
    let limit = RateLimit { limit: 0, window: WINDOW };
    assert_within_window(retry_after(limiter.check(&key, limit).await, "check"), WINDOW, "check");
    assert_within_window(retry_after(limiter.hit(&key, limit).await, "hit"), WINDOW, "hit");
}

/// `check` answers `Limited` once `limit` events were counted (the next attempt must be
/// refused), and counts nothing itself.
pub async fn check_is_allowed_below_the_limit_and_limited_at_it_without_counting(
    limiter: &dyn RateLimiter,
    prefix: &str,
) {
    let key = format!("{prefix}:203.0.113.7");
    let limit = RateLimit { limit: 3, window: WINDOW };
    assert_eq!(limiter.check(&key, limit).await, Ok(RateDecision::Allowed), "an unknown key");
    for _ in 0..2 {
        assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed));
    }
    for check in 1..=5 {
        assert_eq!(limiter.check(&key, limit).await, Ok(RateDecision::Allowed), "check {check} at 2 of 3");
    }
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed), "the checks counted nothing");
    for check in 1..=2 {
        let what = format!("check {check} at 3 of 3");
        assert_within_window(retry_after(limiter.check(&key, limit).await, &what), WINDOW, &what);
    }
    let _ = retry_after(limiter.hit(&key, limit).await, "the fourth hit");
}

/// `reset` forgets a key's count; resetting an unknown key succeeds.
pub async fn reset_forgets_the_key(limiter: &dyn RateLimiter, prefix: &str) {
    let key = format!("{prefix}:login-failures:grace@example.com");
    let limit = RateLimit { limit: 1, window: WINDOW };
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed));
    let _ = retry_after(limiter.hit(&key, limit).await, "the second hit");

    assert_eq!(limiter.reset(&key).await, Ok(()));
    assert_eq!(limiter.check(&key, limit).await, Ok(RateDecision::Allowed), "check after reset");
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed), "hit after reset");
    assert_eq!(limiter.reset(&format!("{prefix}:never-seen")).await, Ok(()));
}

/// Keys count separately, however close they are: case, whitespace, separators, non-ASCII
/// text, and long keys that differ only after their first 200 bytes.
pub async fn keys_are_independent(limiter: &dyn RateLimiter, prefix: &str) {
    let long = "x".repeat(300);
    let keys: Vec<String> = [
        "ada@example.com",
        "Ada@example.com",
        "ada@example.com ",
        "ada@example.com:extra",
        "2001:db8::1",
        "*",
        "ünïcödé\n",
        &format!("{long}1"),
        &format!("{long}2"),
    ]
    .iter()
    .map(|key| format!("{prefix}:{key}"))
    .collect();
    let limit = RateLimit { limit: 1, window: WINDOW };
    for key in &keys {
        assert_eq!(limiter.check(key, limit).await, Ok(RateDecision::Allowed), "{key:?} starts unused");
        assert_eq!(limiter.hit(key, limit).await, Ok(RateDecision::Allowed), "{key:?} counts on its own");
        let _ = retry_after(limiter.hit(key, limit).await, &format!("the second hit of {key:?}"));
    }
    assert_eq!(limiter.reset(&keys[0]).await, Ok(()));
    let _ = retry_after(limiter.check(&keys[1], limit).await, "another key after a reset");
}

/// Once the window has ended, the key counts from zero again.
pub async fn after_the_window_the_key_starts_over(limiter: &dyn RateLimiter, prefix: &str) {
    let key = format!("{prefix}:short-window");
    let limit = RateLimit { limit: 1, window: Duration::from_millis(300) };
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed));
    let _ = retry_after(limiter.hit(&key, limit).await, "the second hit");

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(limiter.check(&key, limit).await, Ok(RateDecision::Allowed), "check after the window");
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed), "hit after the window");
    let _ = retry_after(limiter.hit(&key, limit).await, "the second hit of the new window");
}

/// The window starts at the first hit and is fixed: later hits do not push its end back.
pub async fn later_hits_do_not_extend_the_window(limiter: &dyn RateLimiter, prefix: &str) {
    let key = format!("{prefix}:fixed-window");
    let limit = RateLimit { limit: 2, window: Duration::from_millis(600) };
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(limiter.hit(&key, limit).await, Ok(RateDecision::Allowed));
    tokio::time::sleep(Duration::from_millis(350)).await;
    // 700 ms after the first hit: a window extended by the second hit would make this the third.
    assert_eq!(
        limiter.hit(&key, limit).await,
        Ok(RateDecision::Allowed),
        "a new window began 600 ms after the first hit"
    );
}
