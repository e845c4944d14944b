//! The user-service HTTP adapter and composition root.
//!
//! - [`config`]: settings from the environment.
//! - [`startup`]: [`startup::Application`], which wires adapters into the domain's use cases
//!   and serves them.
//! - [`routes`], [`dto`], [`extract`], [`envelope`], [`error`]: the REST surface, its bodies,
//!   and the envelope every response uses.
//! - [`password`]: the argon2id password hasher.
//!
//! Business rules live in the `domain` crate; storage in `adapters-postgres`.

pub mod abuse;
pub mod auth;
pub mod config;
pub mod dto;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
pub mod password;
pub mod routes;
pub mod startup;
pub mod store;
pub mod telemetry;
