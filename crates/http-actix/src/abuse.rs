//! Abuse limits: attempts per client address, and guesses at an account's secret (a login's
//! password, a password change's current password). Counters live in Redis when configured,
//! in process otherwise; a limiter that cannot answer lets the request through rather than
//! failing it.
//!
//! **Attempts per address.** Logins and registrations count per client address (IPv6 per
//! /64 network). Callers holding a service key are exempt (the gateway acts for many
//! clients); callers the network vouches for are counted like anyone else.
//!
//! **Guesses.** Nobody but the owner may be able to stop the owner from logging in, and
//! guessing must stay capped whoever spreads it over how many addresses:
//! - each (account, address) pair has its own strict budget of wrong guesses per window;
//!   spent, that address is refused for that account, whatever it sends;
//! - each account has a budget of wrong guesses from all addresses. Spent, it slows rather
//!   than blocks: addresses that never logged in to the account share one attempt per
//!   interval, while an address that has logged in to it successfully before (OWASP's
//!   "device cookie", for an API without cookies) keeps working at its own pair budget.
//!
//! So a third party can at most slow the owner down on addresses the owner never used, and
//! an account sees at most `account budget + window / interval` wrong guesses per window from
//! unknown addresses. Checks run before any password is hashed, so refused guesses cost no
//! hashing work. Counter keys hold SHA-256 digests, never an email or an address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpRequest;
use domain::auth::Principal;
use domain::rate_limit::{RateDecision, RateLimit, RateLimiter};
use sha2::{Digest, Sha256};

use crate::auth::client_address::{Network, client_address};
use crate::error::ApiError;

/// How guesses at secrets are limited.
#[derive(Debug, Clone, Copy)]
pub struct GuessLimits {
    /// Wrong guesses per (account, address) per window (`LOGIN_MAX_FAILURES`,
    /// `LOGIN_FAILURE_WINDOW_SECONDS`).
    pub per_address: RateLimit,
    /// Wrong guesses per account from all addresses per window, before attempts from
    /// unknown addresses are slowed (`LOGIN_ACCOUNT_MAX_FAILURES`).
    pub per_account: RateLimit,
    /// Once the account's budget is spent, addresses unknown to it share one attempt per
    /// this interval (`LOGIN_SLOWED_INTERVAL_SECONDS`).
    pub slowed_interval: Duration,
    /// How long an address that logged in successfully is known to the account
    /// (`LOGIN_KNOWN_ADDRESS_DAYS`).
    pub known_for: Duration,
}

/// The configured limits and their counters.
#[derive(Clone)]
pub struct Limits {
    /// The counters.
    pub limiter: Arc<dyn RateLimiter>,
    /// Attempts per client address.
    pub per_address: RateLimit,
    /// Guesses at secrets.
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

/// Which secret is guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// A login's password; the account is named by its email address.
    Login,
    /// A password change's current password; the account is named by the user id.
    CurrentPassword,
}

impl Secret {
    const fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::CurrentPassword => "password-change",
        }
    }
}

/// One guess at one account's secret from one client address.
#[derive(Debug, Clone)]
pub struct Guess {
    secret: Secret,
    account: String,
    address: String,
}

impl Guess {
    /// A guess at `account`'s `secret` by the client of `request`.
    pub fn new(limits: &Limits, secret: Secret, account: &str, request: &HttpRequest) -> Self {
        let address = client_address(request, &limits.trusted_proxies)
            .map_or_else(|| "unknown".to_owned(), |address| limited_address(address).to_string());
        Self { secret, account: account.to_owned(), address }
    }

    /// A counter key: the secret, what is counted, and a digest of who.
    fn key(&self, counter: &str, with_address: bool) -> String {
        let mut digest = Sha256::new();
        digest.update(self.account.as_bytes());
        if with_address {
            digest.update(b"\n");
            digest.update(self.address.as_bytes());
        }
        let digest: String = digest.finalize()[..16].iter().map(|byte| format!("{byte:02x}")).collect();
        format!("{}:{counter}:{digest}", self.secret.name())
    }
}

fn refuse_if_limited(decision: RateDecision) -> Result<(), ApiError> {
    match decision {
        RateDecision::Allowed => Ok(()),
        RateDecision::Limited { retry_after } => Err(ApiError::too_many_requests(retry_after)),
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
        match self.limiter.hit(&key, self.per_address).await {
            Ok(decision) => refuse_if_limited(decision),
            Err(_) => Ok(()),
        }
    }

    /// Whether `guess` may be checked at all (before any hashing): 429 once its address has
    /// spent its budget for the account, or once the account's budget is spent, the address
    /// is unknown to it and the slowed attempt of this interval is taken.
    pub async fn admit(&self, guess: &Guess) -> Result<(), ApiError> {
        let limits = self.guesses;
        if let Ok(decision) = self.limiter.check(&guess.key("failures", true), limits.per_address).await {
            refuse_if_limited(decision)?;
        }
        let account_spent = matches!(
            self.limiter.check(&guess.key("failures", false), limits.per_account).await,
            Ok(RateDecision::Limited { .. })
        );
        if !account_spent || self.is_known(guess).await {
            return Ok(());
        }
        let slowed = RateLimit { limit: 1, window: limits.slowed_interval };
        match self.limiter.hit(&guess.key("slowed", false), slowed).await {
            Ok(decision) => refuse_if_limited(decision),
            Err(_) => Ok(()),
        }
    }

    /// Counts a wrong guess against its address and its account.
    pub async fn record_wrong(&self, guess: &Guess) {
        let _ = self.limiter.hit(&guess.key("failures", true), self.guesses.per_address).await;
        let _ = self.limiter.hit(&guess.key("failures", false), self.guesses.per_account).await;
    }

    /// After a right guess: forgets the address's wrong guesses and remembers it as known to
    /// the account. The account's budget stays spent: the owner logging in must not reset an
    /// attacker's count.
    pub async fn record_right(&self, guess: &Guess) {
        let _ = self.limiter.reset(&guess.key("failures", true)).await;
        let known = RateLimit { limit: u32::MAX, window: self.guesses.known_for };
        let _ = self.limiter.hit(&guess.key("known", true), known).await;
    }

    /// Whether the guess's address has logged in to its account before (within
    /// `known_for`).
    async fn is_known(&self, guess: &Guess) -> bool {
        // A counter that has counted once is "limited" at a limit of one.
        let once = RateLimit { limit: 1, window: self.guesses.known_for };
        matches!(self.limiter.check(&guess.key("known", true), once).await, Ok(RateDecision::Limited { .. }))
    }
}

/// The part of an address limits count by: IPv4 clients reached over IPv6 count as their
/// IPv4 address, and IPv6 clients by their /64 network (one subscriber's allocation, which
/// holds 2^64 addresses).
fn limited_address(address: IpAddr) -> IpAddr {
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

    /// Limits of 3 wrong guesses per address and 5 per account per 15 minutes, then one
    /// attempt per 30 s, on a clock the test moves.
    fn limits() -> (Limits, Arc<AtomicU64>) {
        let (start, elapsed_ms) = (Instant::now(), Arc::new(AtomicU64::new(0)));
        let clock = Arc::clone(&elapsed_ms);
        let limiter =
            MemoryRateLimiter::new().with_clock(move || start + Duration::from_millis(clock.load(Ordering::SeqCst)));
        let window = Duration::from_secs(900);
        let guesses = GuessLimits {
            per_address: RateLimit { limit: 3, window },
            per_account: RateLimit { limit: 5, window },
            slowed_interval: Duration::from_secs(30),
            known_for: Duration::from_secs(30 * 86_400),
        };
        let per_address = RateLimit { limit: 100, window: Duration::from_secs(60) };
        (Limits { limiter: Arc::new(limiter), per_address, guesses, trusted_proxies: Vec::new() }, elapsed_ms)
    }

    fn guess(address: &str) -> Guess {
        Guess { secret: Secret::Login, account: "victim@example.com".into(), address: address.into() }
    }

    /// Guesses wrong from `address` until refused; returns how many were checked.
    async fn guess_until_refused(limits: &Limits, address: &str, at_most: usize) -> usize {
        for checked in 0..at_most {
            if limits.admit(&guess(address)).await.is_err() {
                return checked;
            }
            limits.record_wrong(&guess(address)).await;
        }
        at_most
    }

    #[tokio::test]
    async fn one_address_is_capped_while_the_owner_elsewhere_still_logs_in() {
        let (limits, _) = limits();
        assert_eq!(guess_until_refused(&limits, "198.51.100.1", 10).await, 3);
        // Even the right password is refused from the attacker's address.
        assert!(limits.admit(&guess("198.51.100.1")).await.is_err());
        // The account's budget (5) is not spent: the owner, anywhere else, logs in.
        assert!(limits.admit(&guess("203.0.113.7")).await.is_ok());
    }

    #[tokio::test]
    async fn a_spent_account_budget_slows_unknown_addresses_and_spares_known_ones() {
        let (limits, clock) = limits();
        let owner = guess("203.0.113.7");
        limits.admit(&owner).await.unwrap();
        limits.record_right(&owner).await;
        // Two attacker addresses spend the account's budget of 5.
        assert_eq!(guess_until_refused(&limits, "198.51.100.1", 3).await, 3);
        assert_eq!(guess_until_refused(&limits, "198.51.100.2", 2).await, 2);
        // From then on, unknown addresses share one attempt per 30 s.
        assert!(limits.admit(&guess("198.51.100.3")).await.is_ok());
        for address in ["198.51.100.3", "198.51.100.4", "198.51.100.5"] {
            assert!(limits.admit(&guess(address)).await.is_err(), "{address}");
        }
        clock.fetch_add(30_000, Ordering::SeqCst);
        assert!(limits.admit(&guess("198.51.100.6")).await.is_ok());
        assert!(limits.admit(&guess("198.51.100.7")).await.is_err());
        // The owner's address, known from its earlier login, is not slowed.
        for _ in 0..3 {
            assert!(limits.admit(&owner).await.is_ok());
        }
        // Its success does not reset the attacker's spent account budget.
        limits.record_right(&owner).await;
        assert!(limits.admit(&guess("198.51.100.8")).await.is_err());
        // After the window, the budget is whole again.
        clock.fetch_add(900_000, Ordering::SeqCst);
        assert_eq!(guess_until_refused(&limits, "198.51.100.9", 10).await, 3);
    }

    #[tokio::test]
    async fn a_right_guess_forgets_the_addresses_wrong_ones() {
        let (limits, _) = limits();
        let owner = guess("203.0.113.7");
        for _ in 0..2 {
            limits.record_wrong(&owner).await;
        }
        limits.record_right(&owner).await;
        assert_eq!(guess_until_refused(&limits, "203.0.113.7", 10).await, 3);
    }

    #[test]
    fn counter_keys_hold_digests_never_the_email_or_address() {
        let key = guess("198.51.100.1").key("failures", true);
        assert!(key.starts_with("login:failures:") && !key.contains("victim") && !key.contains("198.51"), "{key}");
        assert_ne!(key, guess("198.51.100.2").key("failures", true));
        assert_eq!(guess("198.51.100.1").key("failures", false), guess("198.51.100.2").key("failures", false));
    }

    #[test]
    fn ipv6_clients_count_by_their_64_network_and_mapped_ipv4_as_ipv4() {
        let ip = |raw: &str| raw.parse::<IpAddr>().unwrap();
        assert_eq!(limited_address(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(limited_address(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(limited_address(ip("203.0.113.9")), ip("203.0.113.9"));
    }
}
