//! What a use case can fail with: each operation its own error ([`ReadError`],
//! [`RegisterError`], …: only what it can return), each widening into [`ServiceError`], the
//! union a driver maps in one place.

use crate::error::BoxError;
use crate::idempotency::IdempotencyConflict;
use crate::ports::{HashError, RepositoryError};

/// Everything a use case of [`crate::service::UserService`] can fail with: the union that
/// each operation's error widens into, for a driver that maps errors in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No user has this id.
    #[error("user not found")]
    UserNotFound,
    /// The user has no device with this id or token.
    #[error("device not found")]
    DeviceNotFound,
    /// Login failed: unknown account or wrong password (deliberately indistinguishable).
    #[error("invalid email or password")]
    InvalidCredentials,
    /// A password change named the wrong current password.
    #[error("the current password is incorrect")]
    CurrentPasswordMismatch,
    /// Another user already has this email address.
    #[error("email address already registered")]
    EmailTaken,
    /// No category has this key.
    #[error("category not found")]
    CategoryNotFound,
    /// A category with this key already exists.
    #[error("a category with this key already exists")]
    CategoryExists,
    /// The category was not removed: this many users have choices in it.
    #[error("users have choices in this category; remove it with force=true to drop them")]
    CategoryInUse(u64),
    /// An as-recorded question about a time before the user registered.
    #[error("the user was not registered yet at that time")]
    NotYetRegistered,
    /// An idempotent request cannot run: its key is in flight or was used for another request.
    #[error(transparent)]
    Idempotency(#[from] crate::idempotency::IdempotencyConflict),
    /// The change is committed, but the cache could not confirm its invalidation in time
    /// (Redis unreachable): the write is not acknowledged, since another instance could still
    /// serve the value it replaced. Retrying the same request confirms it.
    #[error("the change is saved, but neither the cache nor the invalidation ledger confirmed its invalidation")]
    InvalidationUnconfirmed,
    /// The change committed, but reading the result back failed: the caller must not take
    /// the failure for a refused change (its change events exist).
    #[error("the change is saved, but reading the result back failed")]
    SavedButUnread,
    /// A dependency (the database, the password hasher's capacity) cannot serve now; the
    /// caller may retry later.
    #[error("{UNAVAILABLE}")]
    Unavailable(#[source] BoxError),
    /// Anything else: a bug or an unexpected state. Logged, never shown to callers.
    #[error("{UNEXPECTED}")]
    Unexpected(#[source] BoxError),
}

/// Declares the error of one operation: the variants of [`ServiceError`] it can return (unit
/// variants, then `;` and variants carrying a `Copy` value), plus `Unavailable` and
/// `Unexpected`, which every operation can return. Generates the conversions: into
/// [`ServiceError`] (lossless, for a driver that maps every error in one place), and from
/// it and the ports' errors. A variant the operation does not declare becomes
/// `Unexpected`: a logged failure, never a wrong answer. Messages are [`ServiceError`]'s.
macro_rules! operation_error {
    ($(#[$meta:meta])* $name:ident { $($unit:ident),* $(; $($carrying:ident($value:ty)),*)? }) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub enum $name {
            $(#[doc = concat!("See [`ServiceError::", stringify!($unit), "`].")] $unit,)*
            $($(#[doc = concat!("See [`ServiceError::", stringify!($carrying), "`].")] $carrying($value),)*)?
            /// A dependency cannot serve now; the caller may retry later.
            Unavailable(BoxError),
            /// A bug or an unexpected state: logged, never shown to callers.
            Unexpected(BoxError),
        }

        impl From<$name> for ServiceError {
            fn from(error: $name) -> Self {
                match error {
                    $($name::$unit => Self::$unit,)*
                    $($($name::$carrying(value) => Self::$carrying(value),)*)?
                    $name::Unavailable(source) => Self::Unavailable(source),
                    $name::Unexpected(source) => Self::Unexpected(source),
                }
            }
        }

        impl From<ServiceError> for $name {
            fn from(error: ServiceError) -> Self {
                match error {
                    $(ServiceError::$unit => Self::$unit,)*
                    $($(ServiceError::$carrying(value) => Self::$carrying(value),)*)?
                    ServiceError::Unavailable(source) => Self::Unavailable(source),
                    ServiceError::Unexpected(source) => Self::Unexpected(source),
                    #[allow(unreachable_patterns, reason = "an operation may declare every variant")]
                    undeclared => Self::Unexpected(
                        format!(concat!(stringify!($name), " does not declare: {}"), undeclared).into(),
                    ),
                }
            }
        }

        impl From<RepositoryError> for $name {
            fn from(error: RepositoryError) -> Self {
                ServiceError::from(error).into()
            }
        }

        impl From<HashError> for $name {
            fn from(error: HashError) -> Self {
                ServiceError::from(error).into()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $(Self::$unit => std::fmt::Display::fmt(&ServiceError::$unit, f),)*
                    $($(Self::$carrying(value) => std::fmt::Display::fmt(&ServiceError::$carrying(*value), f),)*)?
                    Self::Unavailable(_) => f.write_str(UNAVAILABLE),
                    Self::Unexpected(_) => f.write_str(UNEXPECTED),
                }
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                match self {
                    Self::Unavailable(source) | Self::Unexpected(source) => Some(source.as_ref()),
                    #[allow(unreachable_patterns, reason = "an operation may declare only these")]
                    _ => None,
                }
            }
        }
    };
}

/// What [`ServiceError::Unavailable`] says.
const UNAVAILABLE: &str = "temporarily unavailable";
/// What [`ServiceError::Unexpected`] says.
const UNEXPECTED: &str = "unexpected failure";

operation_error! {
    /// Why a read of a user (profile, representation, preferences, devices, eligibility)
    /// failed.
    ReadError { UserNotFound }
}

operation_error! {
    /// Why an eligibility question failed.
    EligibilityError { UserNotFound, CategoryNotFound, NotYetRegistered }
}

operation_error! {
    /// Why a change of the category catalogue failed.
    CatalogueError { CategoryNotFound, CategoryExists, InvalidationUnconfirmed; CategoryInUse(u64) }
}

operation_error! {
    /// Why a change of a user's choice in a category failed.
    ChoiceError { UserNotFound, CategoryNotFound, InvalidationUnconfirmed }
}

operation_error! {
    /// Why a registration failed.
    RegisterError { EmailTaken, InvalidationUnconfirmed; Idempotency(IdempotencyConflict) }
}

operation_error! {
    /// Why a change of contact details failed.
    ContactError { UserNotFound, EmailTaken, InvalidationUnconfirmed, SavedButUnread }
}

operation_error! {
    /// Why a change of preferences, or an erasure, failed.
    ChangeError { UserNotFound, InvalidationUnconfirmed }
}

operation_error! {
    /// Why a device registration, activation or removal failed.
    DeviceError { UserNotFound, DeviceNotFound, InvalidationUnconfirmed; Idempotency(IdempotencyConflict) }
}

operation_error! {
    /// Why a login failed.
    LoginError { InvalidCredentials }
}

operation_error! {
    /// Why a password change failed.
    PasswordChangeError { UserNotFound, CurrentPasswordMismatch }
}

impl From<RepositoryError> for ServiceError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::EmailTaken => Self::EmailTaken,
            RepositoryError::UserNotFound => Self::UserNotFound,
            RepositoryError::CategoryNotFound => Self::CategoryNotFound,
            RepositoryError::CategoryExists => Self::CategoryExists,
            RepositoryError::Idempotency(conflict) => Self::Idempotency(conflict),
            RepositoryError::Unavailable(source) => Self::Unavailable(source),
            RepositoryError::Unexpected(source) => Self::Unexpected(source),
        }
    }
}

impl From<HashError> for ServiceError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded => Self::Unavailable(Box::new(HashError::Overloaded)),
            HashError::Unexpected(source) => Self::Unexpected(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_error_widens_to_the_same_service_error_and_says_the_same() {
        let widened = ServiceError::from(DeviceError::Idempotency(IdempotencyConflict::InFlight));
        assert!(matches!(widened, ServiceError::Idempotency(IdempotencyConflict::InFlight)));
        assert_eq!(DeviceError::DeviceNotFound.to_string(), ServiceError::DeviceNotFound.to_string());
        assert_eq!(LoginError::Unavailable("down".into()).to_string(), "temporarily unavailable");
    }

    #[test]
    fn an_error_an_operation_does_not_declare_becomes_unexpected_never_another_answer() {
        assert!(matches!(LoginError::from(ServiceError::UserNotFound), LoginError::Unexpected(_)));
        assert!(matches!(ReadError::from(ServiceError::EmailTaken), ReadError::Unexpected(_)));
        assert!(matches!(ChangeError::from(ServiceError::UserNotFound), ChangeError::UserNotFound));
    }
}
