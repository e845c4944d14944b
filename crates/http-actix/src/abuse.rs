//! Abuse limits: attempts per client address, guesses at an account's password, and
//! guesses at the current password through one access token. Counters live in Redis when
//! configured, in process otherwise; a limiter that cannot answer lets the request through
//! rather than failing it.
//!
//! **Attempts per address.** Logins and registrations count per client address (IPv6 per
//! /64 network). Callers holding a service key are exempt (the gateway acts for many
//! clients); callers the network vouches for are counted like anyone else.
//!
//! **Login guesses.** Nobody but the owner may be able to stop the owner from logging in
//! where the owner did before, and guessing must stay capped whoever spreads it over how many
//! addresses:
//! - each (account, address) pair has a strict budget of attempts per window, given back by
//!   a successful login; spent, that address is refused for that account whatever it sends;
//! - each account has a budget of attempts from addresses that never logged in to it. Spent,
//!   it slows rather than blocks: those addresses share one attempt per interval, while an
//!   address that logged in successfully before (OWASP's "device cookie", for an API without
//!   cookies) keeps working at its own pair budget.
//!
//! Attempts are counted before the password is checked, atomically, so that guesses sent at
//! once cannot all pass a check that only later counts them, and refused guesses cost no
//! hashing. An account thus sees at most `account budget + window / interval` guesses per
//! window from addresses new to it.
//!
//! **Current-password guesses** (a password change) count per access token, over the token's
//! lifetime: a stolen token buys a few guesses at most, however many addresses use it, and
//! its thief cannot spend the owner's login budgets. Counter keys hold SHA-256 digests, never
//! an email, an address or a token.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use domain::auth::Principal;
use domain::rate_limit::{RateDecision, RateLimit, RateLimiter};
use sha2::{Digest, Sha256};

use crate::auth::client_address::{Network, client_address};
use crate::error::ApiError;

/// How guesses at passwords are limited.
#[derive(Debug, Clone, Copy)]
pub struct GuessLimits {
    /// Login attempts per (account, address) per window (`LOGIN_MAX_FAILURES`,
    /// `LOGIN_FAILURE_WINDOW_SECONDS`); also the wrong current passwords one access token may
    /// try.
    pub per_address: RateLimit,
    /// Login attempts per account from addresses new to it per window, before they are
    /// slowed (`LOGIN_ACCOUNT_MAX_FAILURES`).
    pub per_account: RateLimit,
    /// Once the account's budget is spent, addresses new to it share one attempt per this
    /// interval (`LOGIN_SLOWED_INTERVAL_SECONDS`).
    pub slowed_interval: Duration,
    /// How long after its last successful login an address stays known to the account
    /// (`LOGIN_KNOWN_ADDRESS_DAYS`).
    pub known_for: Duration,
    /// How long an access token lives (`JWT_TTL`): the window of its current-password
    /// guesses.
    pub token_lifetime: Duration,
}

/// The counters, one store per kind, so that a flood of one kind can never evict another
/// (the in-process store forgets its oldest windows when full).
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "trait objects of the port have no Debug")]
pub struct Counters {
    /// Attempts per client address.
    pub attempts: Arc<dyn RateLimiter>,
    /// Password guesses.
    pub guesses: Arc<dyn RateLimiter>,
    /// Addresses known to accounts.
    pub known_addresses: Arc<dyn RateLimiter>,
}

/// The configured limits and their counters.
#[derive(Clone)]
pub struct Limits {
    /// The counters.
    pub counters: Counters,
    /// Attempts per client address.
    pub per_address: RateLimit,
    /// Guesses at passwords.
    pub guesses: GuessLimits,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Network>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("per_address", &self.per_address)
            .field("guesses", &self.guesses)
            .finish_non_exhaustive()
    }
}

/// One login attempt at one account from one client address.
#[derive(Debug, Clone)]
pub struct Guess {
    account: String,
    address: String,
}

impl Guess {
    /// An attempt at the account of `email` by the client of `request`.
    pub fn new(limits: &Limits, email: &str, request: &HttpRequest) -> Self {
        let address = client_address(request, &limits.trusted_proxies)
            .map_or_else(|| "unknown".to_owned(), |address| limited_address(address).to_string());
        Self { account: email.to_owned(), address }
    }

    /// A counter key: what is counted, and a digest of whose.
    fn key(&self, counter: &str, with_address: bool) -> String {
        let parts: &[&str] = if with_address { &[&self.account, &self.address] } else { &[&self.account] };
        format!("login:{counter}:{}", digest(parts))
    }
}

/// The first 16 bytes of the SHA-256 of `parts` (separated, so that parts cannot run
/// together), in hex.
fn digest(parts: &[&str]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest.finalize()[..16].iter().map(|byte| format!("{byte:02x}")).collect()
}

fn refuse_if_limited(decision: RateDecision) -> Result<(), ApiError> {
    match decision {
        RateDecision::Allowed => Ok(()),
        RateDecision::Limited { retry_after } => Err(ApiError::too_many_requests(retry_after)),
    }
}

/// Counts one event; 429 over the limit, and through when the store cannot answer.
async fn count(limiter: &dyn RateLimiter, key: &str, limit: RateLimit) -> Result<(), ApiError> {
    match limiter.hit(key, limit).await {
        Ok(decision) => refuse_if_limited(decision),
        Err(_) => Ok(()),
    }
}

impl Limits {
    /// Counts an attempt of `action` (`login`, `register`) from the client's address;
    /// 429 over the limit. Callers holding a service key are not counted.
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
        count(self.counters.attempts.as_ref(), &key, self.per_address).await
    }

    /// Counts a login attempt before its password is checked: 429 once its address has spent
    /// its budget for the account, or once the account's budget for new addresses is spent,
    /// this address is new to it and the slowed attempt of this interval is taken.
    pub async fn admit(&self, guess: &Guess) -> Result<(), ApiError> {
        let (guesses, limits) = (self.counters.guesses.as_ref(), self.guesses);
        count(guesses, &guess.key("attempts", true), limits.per_address).await?;
        if self.is_known(guess).await {
            return Ok(());
        }
        if count(guesses, &guess.key("attempts", false), limits.per_account).await.is_ok() {
            return Ok(());
        }
        let slowed = RateLimit { limit: 1, window: limits.slowed_interval };
        count(guesses, &guess.key("slowed", false), slowed).await
    }

    /// After a successful login: gives the address its budget back, and remembers it as
    /// known to the account for `known_for` from now. The account's budget stays spent: the
    /// owner logging in must not reset an attacker's count.
    pub async fn record_success(&self, guess: &Guess) {
        let _ = self.counters.guesses.reset(&guess.key("attempts", true)).await;
        let known = guess.key("known", true);
        let _ = self.counters.known_addresses.reset(&known).await;
        let window = RateLimit { limit: u32::MAX, window: self.guesses.known_for };
        let _ = self.counters.known_addresses.hit(&known, window).await;
    }

    /// Counts a guess at the current password made with the access token of `request`,
    /// before it is checked: 429 once the token has made `per_address.limit` of them.
    pub async fn admit_current_password_guess(&self, request: &HttpRequest) -> Result<(), ApiError> {
        let token = request.headers().get(actix_web::http::header::AUTHORIZATION).map(|value| value.as_bytes());
        let token = String::from_utf8_lossy(token.unwrap_or_default());
        let key = format!("password-change:attempts:{}", digest(&[&token]));
        let limit = RateLimit { limit: self.guesses.per_address.limit, window: self.guesses.token_lifetime };
        count(self.counters.guesses.as_ref(), &key, limit).await
    }

    /// Whether the guess's address has logged in to its account within `known_for`.
    async fn is_known(&self, guess: &Guess) -> bool {
        // A counter that has counted once is "limited" at a limit of one.
        let once = RateLimit { limit: 1, window: self.guesses.known_for };
        let known = self.counters.known_addresses.check(&guess.key("known", true), once).await;
        matches!(known, Ok(RateDecision::Limited { .. }))
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

    use adapters_memory::MemoryRateLimiter;

    use super::*;

    /// Limits of 3 attempts per address and 5 per account per 15 minutes, then one attempt
    /// per 30 s, on a clock the test moves.
    fn limits() -> (Limits, Arc<AtomicU64>) {
        let (start, elapsed_ms) = (Instant::now(), Arc::new(AtomicU64::new(0)));
        let store = || {
            let clock = Arc::clone(&elapsed_ms);
            let limiter: Arc<dyn RateLimiter> = Arc::new(
                MemoryRateLimiter::new()
                    .with_clock(move || start + Duration::from_millis(clock.load(Ordering::SeqCst))),
            );
            limiter
        };
        let counters = Counters { attempts: store(), guesses: store(), known_addresses: store() };
        let window = Duration::from_secs(900);
        let guesses = GuessLimits {
            per_address: RateLimit { limit: 3, window },
            per_account: RateLimit { limit: 5, window },
            slowed_interval: Duration::from_secs(30),
            known_for: Duration::from_secs(30 * 86_400),
            token_lifetime: Duration::from_secs(3_600),
        };
        let per_address = RateLimit { limit: 100, window: Duration::from_secs(60) };
        (Limits { counters, per_address, guesses, trusted_proxies: Vec::new() }, elapsed_ms)
    }

    fn guess(address: &str) -> Guess {
        Guess { account: "victim@example.com".into(), address: address.into() }
    }

    /// Attempts from `address` until refused; returns how many were admitted.
    async fn attempt_until_refused(limits: &Limits, address: &str, at_most: usize) -> usize {
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
    fn counter_keys_hold_digests_never_the_email_or_address() {
        let key = guess("198.51.100.1").key("attempts", true);
        assert!(key.starts_with("login:attempts:") && !key.contains("victim") && !key.contains("198.51"), "{key}");
        assert_ne!(key, guess("198.51.100.2").key("attempts", true));
        assert_eq!(guess("198.51.100.1").key("attempts", false), guess("198.51.100.2").key("attempts", false));
    }

    #[test]
    fn ipv6_clients_count_by_their_64_network_and_mapped_ipv4_as_ipv4() {
        let ip = |raw: &str| raw.parse::<IpAddr>().unwrap();
        assert_eq!(limited_address(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(limited_address(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(limited_address(ip("203.0.113.9")), ip("203.0.113.9"));
    }
}
