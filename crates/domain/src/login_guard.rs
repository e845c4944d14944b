//! The login lockout policy: how guesses at passwords are capped without letting anyone
//! lock the owner out. A business rule, so it lives here, over the [`RateLimiter`] port;
//! the driver says who the client is (its address) and turns a refusal into its protocol's
//! answer (HTTP 429 with `Retry-After`).
//!
//! Nobody but the owner may be able to stop the owner from logging in where the owner did
//! before, and guessing must stay capped whoever spreads it over how many addresses:
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
//! Guesses at the current password (a password change) count per access token, over the
//! token's lifetime: a stolen token buys a few guesses at most, however many addresses use
//! it, and its thief cannot spend the owner's login budgets. Counter keys hold SHA-256
//! digests, never an email, an address or a token. A counter store that cannot answer lets
//! the attempt through rather than failing it.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::rate_limit::{RateDecision, RateLimit, RateLimiter};

/// How guesses at passwords are limited.
#[derive(Debug, Clone, Copy)]
pub struct GuessLimits {
    /// Login attempts per (account, address) per window; also the wrong current passwords
    /// one access token may try.
    pub per_address: RateLimit,
    /// Login attempts per account from addresses new to it per window, before they are
    /// slowed.
    pub per_account: RateLimit,
    /// Once the account's budget is spent, addresses new to it share one attempt per this
    /// interval.
    pub slowed_interval: Duration,
    /// How long after its last successful login an address stays known to the account.
    pub known_for: Duration,
    /// How long an access token lives: the window of its current-password guesses.
    pub token_lifetime: Duration,
}

/// An attempt refused by the policy: the caller may try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many attempts, retry in {retry_after:?}")]
pub struct GuessRefused {
    /// How long until an attempt may be admitted again (at least one second).
    pub retry_after: Duration,
}

/// One login attempt at one account from one client address.
#[derive(Debug, Clone)]
pub struct LoginAttempt {
    account: String,
    address: String,
}

impl LoginAttempt {
    /// An attempt at the account of `email` from `address` (the driver's name for the
    /// client: an IP address or network, or `unknown`).
    pub fn new(email: &str, address: &str) -> Self {
        Self { account: email.to_owned(), address: address.to_owned() }
    }

    /// A counter key: what is counted, and a digest of whose.
    fn key(&self, counter: &str, with_address: bool) -> String {
        let parts: &[&[u8]] =
            if with_address { &[self.account.as_bytes(), self.address.as_bytes()] } else { &[self.account.as_bytes()] };
        format!("login:{counter}:{}", digest(parts))
    }
}

/// The first 16 bytes of the SHA-256 of `parts` (length-prefixed, so that parts cannot run
/// together), in hex.
fn digest(parts: &[&[u8]]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest.finalize()[..16].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Counts one event: refused over the limit, through when the store cannot answer.
async fn count(limiter: &dyn RateLimiter, key: &str, limit: RateLimit) -> Result<(), GuessRefused> {
    match limiter.hit(key, limit).await {
        Ok(RateDecision::Limited { retry_after }) => Err(GuessRefused { retry_after }),
        Ok(RateDecision::Allowed) | Err(_) => Ok(()),
    }
}

/// The policy over its counters (one store per kind, so that a flood of one kind can never
/// evict another).
#[derive(Clone)]
pub struct LoginGuard {
    guesses: Arc<dyn RateLimiter>,
    known_addresses: Arc<dyn RateLimiter>,
    limits: GuessLimits,
}

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl LoginGuard {
    /// The policy `limits`, counting guesses in `guesses` and remembering addresses known to
    /// accounts in `known_addresses`.
    pub fn new(guesses: Arc<dyn RateLimiter>, known_addresses: Arc<dyn RateLimiter>, limits: GuessLimits) -> Self {
        Self { guesses, known_addresses, limits }
    }

    /// Counts a login attempt before its password is checked: refused once its address has
    /// spent its budget for the account, or once the account's budget for new addresses is
    /// spent, this address is new to it and the slowed attempt of this interval is taken.
    pub async fn admit(&self, attempt: &LoginAttempt) -> Result<(), GuessRefused> {
        let (guesses, limits) = (self.guesses.as_ref(), self.limits);
        count(guesses, &attempt.key("attempts", true), limits.per_address).await?;
        if self.is_known(attempt).await {
            return Ok(());
        }
        if count(guesses, &attempt.key("attempts", false), limits.per_account).await.is_ok() {
            return Ok(());
        }
        let slowed = RateLimit { limit: 1, window: limits.slowed_interval };
        count(guesses, &attempt.key("slowed", false), slowed).await
    }

    /// After a successful login: gives the address its budget back, and remembers it as
    /// known to the account for `known_for` from now. The account's budget stays spent: the
    /// owner logging in must not reset an attacker's count.
    pub async fn record_success(&self, attempt: &LoginAttempt) {
        let _ = self.guesses.reset(&attempt.key("attempts", true)).await;
        let known = attempt.key("known", true);
        let _ = self.known_addresses.reset(&known).await;
        let window = RateLimit { limit: u32::MAX, window: self.limits.known_for };
        let _ = self.known_addresses.hit(&known, window).await;
    }

    /// Counts a guess at the current password made with the access token `token`, before it
    /// is checked: refused once the token has made `per_address.limit` of them.
    pub async fn admit_current_password_guess(&self, token: &[u8]) -> Result<(), GuessRefused> {
        let key = format!("password-change:attempts:{}", digest(&[token]));
        let limit = RateLimit { limit: self.limits.per_address.limit, window: self.limits.token_lifetime };
        count(self.guesses.as_ref(), &key, limit).await
    }

    /// Whether the attempt's address has logged in to its account within `known_for`.
    pub async fn is_known(&self, attempt: &LoginAttempt) -> bool {
        // A counter that has counted once is "limited" at a limit of one.
        let once = RateLimit { limit: 1, window: self.limits.known_for };
        let known = self.known_addresses.check(&attempt.key("known", true), once).await;
        matches!(known, Ok(RateDecision::Limited { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_keys_hold_digests_never_the_email_or_address() {
        let attempt = |address: &str| LoginAttempt::new("victim@example.com", address);
        let key = attempt("198.51.100.1").key("attempts", true);
        assert!(key.starts_with("login:attempts:") && !key.contains("victim") && !key.contains("198.51"), "{key}");
        assert_ne!(key, attempt("198.51.100.2").key("attempts", true));
        assert_eq!(attempt("198.51.100.1").key("attempts", false), attempt("198.51.100.2").key("attempts", false));
    }

    #[test]
    fn digests_of_parts_that_run_together_differ() {
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
    }
}
