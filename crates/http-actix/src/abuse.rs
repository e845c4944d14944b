//! Abuse limits at the door: attempts per client address, and who the client is for the
//! domain's login lockout policy ([`domain::login_guard`], which caps guesses at passwords).
//! Counters live in Redis when configured, in process otherwise; a limiter that cannot
//! answer lets the request through rather than failing it.
//!
//! **Attempts per address.** Logins and registrations count per client address (IPv6 per
//! /64 network). Callers holding a service key are exempt (the gateway acts for many
//! clients); callers the network vouches for are counted like anyone else.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::HttpRequest;
use domain::auth::Principal;
use domain::login_guard::{LoginAttempt, LoginGuard};
use domain::rate_limit::{RateDecision, RateLimit, RateLimiter};

use crate::auth::client_address::{Network, client_address};
use crate::auth::credentials::bearer_credential;
use crate::error::ApiError;

/// The configured limits and their counters.
#[derive(Clone)]
pub struct Limits {
    /// Attempts per client address, counted here.
    pub attempts: Arc<dyn RateLimiter>,
    /// The limit of attempts per client address.
    pub per_address: RateLimit,
    /// The login lockout policy (guesses at passwords), with its own counters.
    pub guard: LoginGuard,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Network>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("per_address", &self.per_address)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Limits {
    /// Counts an attempt of `action` (`login`, `register`) from the client's address;
    /// 429 over the limit, and through when the store cannot answer. Callers holding a
    /// service key are not counted.
    pub async fn per_address(
        &self,
        caller: Option<&Principal>,
        request: &HttpRequest,
        action: &str,
    ) -> Result<(), ApiError> {
        if caller.is_some_and(Principal::holds_service_key) {
            return Ok(());
        }
        let Some(address) = client_address(request, &self.trusted_proxies) else {
            return Ok(());
        };
        let key = format!("{action}:{}", limited_address(address));
        match self.attempts.hit(&key, self.per_address).await {
            Ok(RateDecision::Limited { retry_after }) => Err(ApiError::too_many_requests(retry_after)),
            Ok(RateDecision::Allowed) | Err(_) => Ok(()),
        }
    }

    /// A login attempt at the account of `email` by the client of `request`, as the lockout
    /// policy counts it.
    pub fn login_attempt(&self, email: &str, request: &HttpRequest) -> LoginAttempt {
        let address = client_address(request, &self.trusted_proxies)
            .map_or_else(|| "unknown".to_owned(), |address| limited_address(address).to_string());
        LoginAttempt::new(email, &address)
    }

    /// Counts a guess at the current password made with the access token of `request`,
    /// before it is checked: 429 once the token has made its budget of them. Counted by the
    /// token as authentication reads it (any case of `Bearer`, any spaces around it), so that
    /// respelling the header never buys a new budget; a signed token has one spelling.
    pub async fn admit_current_password_guess(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let header = request.headers().get(actix_web::http::header::AUTHORIZATION).map(|value| value.as_bytes());
        let token = header.and_then(bearer_credential).unwrap_or_default();
        Ok(self.guard.admit_current_password_guess(token).await?)
    }
}

/// The part of an address limits count by: IPv4 clients reached over IPv6 count as their
/// IPv4 address, and IPv6 clients by their /64 network (one subscriber's allocation, which
/// holds 2^64 addresses).
pub fn limited_address(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1_u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Instant;

    use std::time::Duration;

    use adapters_memory::MemoryRateLimiter;
    use domain::login_guard::GuessLimits;

    use super::*;

    /// The domain's lockout policy on the in-process counters: 3 attempts per address and 5
    /// per account per 15 minutes, then one attempt per 30 s, on a clock the test moves.
    fn limits() -> (LoginGuard, Arc<AtomicU64>) {
        let (start, elapsed_ms) = (Instant::now(), Arc::new(AtomicU64::new(0)));
        let store = || {
            let clock = Arc::clone(&elapsed_ms);
            let limiter: Arc<dyn RateLimiter> = Arc::new(
                MemoryRateLimiter::new()
                    .with_clock(move || start + Duration::from_millis(clock.load(Ordering::SeqCst))),
            );
            limiter
        };
        let window = Duration::from_secs(900);
        let guesses = GuessLimits {
            per_address: RateLimit { limit: 3, window },
            per_account: RateLimit { limit: 5, window },
            slowed_interval: Duration::from_secs(30),
            known_for: Duration::from_secs(30 * 86_400),
            token_lifetime: Duration::from_secs(3_600),
        };
        (LoginGuard::new(store(), store(), guesses), elapsed_ms)
    }

    fn guess(address: &str) -> LoginAttempt {
        LoginAttempt::new("victim@example.com", address)
    }

    /// Attempts from `address` until refused; returns how many were admitted.
    async fn attempt_until_refused(limits: &LoginGuard, address: &str, at_most: usize) -> usize {
        for admitted in 0..at_most {
            if limits.admit(&guess(address)).await.is_err() {
                return admitted;
            }
        }
        at_most
    }

    #[tokio::test]
    async fn one_address_is_capped_while_the_owner_elsewhere_still_logs_in() {
        let (limits, _) = limits();
        assert_eq!(attempt_until_refused(&limits, "198.51.100.1", 10).await, 3);
        // Even the right password is refused from the capped address.
        assert!(limits.admit(&guess("198.51.100.1")).await.is_err());
        // The account's budget (5) is not spent: the owner, anywhere else, logs in.
        assert!(limits.admit(&guess("203.0.113.7")).await.is_ok());
    }

    #[tokio::test]
    async fn attempts_sent_at_once_are_counted_before_any_is_checked() {
        let (limits, _) = limits();
        let attacker = guess("198.51.100.1");
        let attempts = (0..20).map(|_| limits.admit(&attacker));
        let admitted = futures_util::future::join_all(attempts).await.iter().filter(|answer| answer.is_ok()).count();
        assert_eq!(admitted, 3);
    }

    #[tokio::test]
    async fn a_spent_account_budget_slows_new_addresses_and_spares_known_ones() {
        let (limits, clock) = limits();
        let owner = guess("203.0.113.7");
        limits.admit(&owner).await.unwrap();
        limits.record_success(&owner).await;
        // Two attacker addresses spend the account's budget of 5 (the owner's attempt came
        // from an address that was not yet known, and counted too).
        assert_eq!(attempt_until_refused(&limits, "198.51.100.1", 3).await, 3);
        assert_eq!(attempt_until_refused(&limits, "198.51.100.2", 1).await, 1);
        // From then on, new addresses share one attempt per 30 s.
        assert!(limits.admit(&guess("198.51.100.3")).await.is_ok());
        for address in ["198.51.100.3", "198.51.100.4", "198.51.100.5"] {
            assert!(limits.admit(&guess(address)).await.is_err(), "{address}");
        }
        clock.fetch_add(30_000, Ordering::SeqCst);
        assert!(limits.admit(&guess("198.51.100.6")).await.is_ok());
        assert!(limits.admit(&guess("198.51.100.7")).await.is_err());
        // The owner's known address is not slowed, and its successes give its budget back.
        for _ in 0..5 {
            assert!(limits.admit(&owner).await.is_ok());
            limits.record_success(&owner).await;
        }
        // Its success does not reset the spent account budget.
        assert!(limits.admit(&guess("198.51.100.8")).await.is_err());
        // After the window, the budget is whole again.
        clock.fetch_add(900_000, Ordering::SeqCst);
        assert_eq!(attempt_until_refused(&limits, "198.51.100.9", 10).await, 3);
    }

    #[tokio::test]
    async fn an_address_stays_known_for_the_window_after_its_last_login() {
        let (limits, clock) = limits();
        let owner = guess("203.0.113.7");
        let day = 86_400_000;
        limits.admit(&owner).await.unwrap();
        limits.record_success(&owner).await;
        // Logging in daily keeps the address known past 30 days from the first login.
        for _ in 0..40 {
            clock.fetch_add(day, Ordering::SeqCst);
            assert!(limits.is_known(&owner).await);
            limits.record_success(&owner).await;
        }
        clock.fetch_add(31 * day, Ordering::SeqCst);
        assert!(!limits.is_known(&owner).await);
    }

    #[test]
    fn ipv6_clients_count_by_their_64_network_and_mapped_ipv4_as_ipv4() {
        let ip = |raw: &str| raw.parse::<IpAddr>().unwrap();
        assert_eq!(limited_address(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(limited_address(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(limited_address(ip("203.0.113.9")), ip("203.0.113.9"));
    }
}
