//! The user-service domain: users, their notification preferences and their push devices.
//!
//! Everything here is pure: value objects that can only hold valid values
//! ([`user::EmailAddress`], [`device::PushToken`], [`preferences::QuietHours`], ...), the
//! ports that storage and infrastructure adapters implement ([`ports`]), and the use cases
//! that tie them together ([`service::UserService`]).
//!
//! What must not live here: diesel, redis, actix, tokio or any other I/O crate. Other Rust
//! services can depend on this crate to share the same rules; its unit tests run with the
//! `mockall` mocks of the ports (feature `mock`).

pub mod auth;
pub mod cache;
pub mod category;
pub mod consent;
pub mod device;
pub mod eligibility;
pub mod error;
pub mod event;
pub mod failure;
pub mod idempotency;
pub mod login_guard;
pub mod ports;
pub mod preferences;
pub mod rate_limit;
mod read_through;
pub mod service;
pub mod user;
mod validate;

pub use error::{FieldError, InvalidValue};
pub use failure::{
    CatalogueError, ChangeError, ChoiceError, ContactError, DeviceError, EligibilityError, LoginError,
    PasswordChangeError, ReadError, RegisterError, ServiceError,
};
