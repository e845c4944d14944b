//! Errors of the domain: invalid values, and what a use case can fail with.

use std::borrow::Cow;

/// Why a raw value could not become a value object. The message is safe to show to callers:
/// it never echoes the rejected value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidValue {
    message: Cow<'static, str>,
}

impl InvalidValue {
    /// An error with a fixed message.
    pub const fn new(message: &'static str) -> Self {
        Self { message: Cow::Borrowed(message) }
    }

    /// An error with a computed message.
    pub fn owned(message: String) -> Self {
        Self { message: Cow::Owned(message) }
    }

    /// The human-readable reason.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// One invalid field of a request, named as the caller spelled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name in the request body (`email`, `quiet_hours_start`, ...).
    pub field: Cow<'static, str>,
    /// Why it was rejected.
    pub message: Cow<'static, str>,
}

impl FieldError {
    /// A field error from a value object's error.
    pub fn new(field: impl Into<Cow<'static, str>>, error: InvalidValue) -> Self {
        Self { field: field.into(), message: error.message }
    }
}

/// What a use case of [`crate::service::UserService`] can fail with.
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
    /// An idempotent request cannot run: its key is in flight or was used for another request.
    #[error(transparent)]
    Idempotency(#[from] crate::idempotency::IdempotencyConflict),
    /// The change is committed, but the cache could not confirm its invalidation in time
    /// (Redis unreachable): the write is not acknowledged, since another instance could still
    /// serve the value it replaced. Retrying the same request confirms it.
    #[error("the change is saved, but neither the cache nor the invalidation ledger confirmed its invalidation")]
    InvalidationUnconfirmed,
    /// A dependency (the database, the password hasher's capacity) cannot serve now; the
    /// caller may retry later.
    #[error("temporarily unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else: a bug or an unexpected state. Logged, never shown to callers.
    #[error("unexpected failure")]
    Unexpected(#[source] BoxError),
}

/// A boxed error that is `Send + Sync`, so that failures of any adapter can travel through
/// the domain without the domain knowing their types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
