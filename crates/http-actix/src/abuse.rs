//! Abuse limits: failed logins per account, and logins and registrations per client
//! address. Callers holding a service key are exempt from per-address limits (the gateway
//! acts for many clients); callers the network vouches for are counted like anyone else. Counters live in Redis when configured, in process otherwise; a limiter that
//! cannot answer lets the request through rather than failing it.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::HttpRequest;
use domain::auth::Principal;
use domain::rate_limit::{RateDecision, RateLimit, RateLimiter};
use domain::user::EmailAddress;

use crate::auth::client_address::{Network, client_address};
use crate::error::ApiError;

/// The configured limits and their counters.
#[derive(Clone)]
pub struct Limits {
    /// The counters.
    pub limiter: Arc<dyn RateLimiter>,
    /// Failed logins per account.
    pub login_failures: RateLimit,
    /// Attempts per client address.
    pub per_address: RateLimit,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Network>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("login_failures", &self.login_failures)
            .field("per_address", &self.per_address)
            .finish_non_exhaustive()
    }
}

fn refuse_if_limited(decision: RateDecision) -> Result<(), ApiError> {
    match decision {
        RateDecision::Allowed => Ok(()),
        RateDecision::Limited { retry_after } => Err(ApiError::too_many_requests(retry_after)),
    }
}

fn account_key(email: &EmailAddress) -> String {
    format!("login-failures:{}", email.as_str())
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
        let key = format!("{action}:{}", normalize(address));
        match self.limiter.hit(&key, self.per_address).await {
            Ok(decision) => refuse_if_limited(decision),
            Err(_) => Ok(()),
        }
    }

    /// 429 when the account has failed too often recently.
    pub async fn check_login_failures(&self, email: &EmailAddress) -> Result<(), ApiError> {
        match self.limiter.check(&account_key(email), self.login_failures).await {
            Ok(decision) => refuse_if_limited(decision),
            Err(_) => Ok(()),
        }
    }

    /// Counts a failed login for the account.
    pub async fn record_login_failure(&self, email: &EmailAddress) {
        let _ = self.limiter.hit(&account_key(email), self.login_failures).await;
    }

    /// Forgets the account's failures after a successful login.
    pub async fn clear_login_failures(&self, email: &EmailAddress) {
        let _ = self.limiter.reset(&account_key(email)).await;
    }
}

/// IPv4 clients reached over IPv6 count as their IPv4 address.
fn normalize(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
