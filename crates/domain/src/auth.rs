//! Who is calling, and what they may reach.
//!
//! Service callers (the gateway, the senders) may do everything. End users reach only
//! their own user, preferences and devices. How a caller proves who it is (service keys,
//! access tokens) is the HTTP adapter's business; the rules live here.

use std::fmt;

use crate::user::{PasswordHash, UserId};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A trusted service, identified by which of the configured keys it presented (or
    /// `internal-network` when the network vouches for it).
    Service {
        /// A non-secret name of the credential, for idempotency scopes and logs.
        credential: String,
    },
    /// An end user with a valid access token.
    User(UserId),
}

/// The caller may not do this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not allowed for this caller")]
pub struct AccessDenied;

impl Principal {
    /// Whether the caller may read or change `user`'s data.
    pub fn may_access(&self, user: UserId) -> Result<(), AccessDenied> {
        match self {
            Self::Service { .. } => Ok(()),
            Self::User(id) if *id == user => Ok(()),
            Self::User(_) => Err(AccessDenied),
        }
    }

    /// Whether the caller is a service (for lists and bulk routes).
    pub fn require_service(&self) -> Result<(), AccessDenied> {
        match self {
            Self::Service { .. } => Ok(()),
            Self::User(_) => Err(AccessDenied),
        }
    }

    /// Whether the caller is `user` itself (services included would be too broad, e.g.
    /// for changing a password).
    pub fn require_owner(&self, user: UserId) -> Result<(), AccessDenied> {
        match self {
            Self::User(id) if *id == user => Ok(()),
            _ => Err(AccessDenied),
        }
    }

    /// A stable, non-secret name of the caller: idempotency keys are scoped by it.
    pub fn scope(&self) -> String {
        match self {
            Self::Service { credential } => format!("service:{credential}"),
            Self::User(id) => format!("user:{id}"),
        }
    }
}

/// What login needs to know about an account.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The account.
    pub user_id: UserId,
    /// The stored password hash.
    pub password_hash: PasswordHash,
    /// The version access tokens must carry.
    pub token_version: i32,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .field("token_version", &self.token_version)
            .finish_non_exhaustive()
    }
}

/// A successful login: whose, and the token version to issue under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    /// The account.
    pub user_id: UserId,
    /// The current token version.
    pub token_version: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_reach_only_themselves_and_services_reach_everyone() {
        let alice = UserId::generate();
        let bob = UserId::generate();
        let service = Principal::Service { credential: "key-1".into() };
        assert!(service.may_access(alice).is_ok());
        assert!(Principal::User(alice).may_access(alice).is_ok());
        assert_eq!(Principal::User(alice).may_access(bob), Err(AccessDenied));
        assert!(service.require_service().is_ok());
        assert_eq!(Principal::User(alice).require_service(), Err(AccessDenied));
        assert!(Principal::User(alice).require_owner(alice).is_ok());
        assert_eq!(service.require_owner(alice), Err(AccessDenied));
        assert_ne!(Principal::User(alice).scope(), Principal::User(bob).scope());
    }
}
