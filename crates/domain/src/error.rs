//! The errors every module of the domain may use: invalid values and the boxed error of an
//! adapter. What use cases fail with is in [`crate::failure`].

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

/// A boxed error that is `Send + Sync`, so that failures of any adapter can travel through
/// the domain without the domain knowing their types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and its chain of causes on one line, as logs show them (an adapter's error
/// often says only "store unavailable" at the top).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}
