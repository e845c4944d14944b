//! Tracing: JSON or human-readable lines, filtered by `LOG_LEVEL` (or `RUST_LOG`).
//!
//! Whatever the filter asks for, dependencies never log below `info`: at `debug`,
//! tokio-postgres writes every query's parameters (emails, password hashes, tokens, as byte
//! arrays), and at `trace` other crates write what crosses the wire. Our own crates follow
//! the filter; none of their lines carries a secret at any level.

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

/// The crates of this workspace, whose every line is ours to vouch for.
const OUR_CRATES: [&str; 9] = [
    "http_actix",
    "user_service",
    "domain",
    "adapters_postgres",
    "adapters_sqlite",
    "adapters_sql_common",
    "adapters_redis",
    "adapters_memory",
    "adapters_amqp",
];

/// Dependencies whose events are never written: the AMQP client logs every failed connection
/// attempt as an error, retry after retry; the publisher reports each kind of failure once
/// (with the client's error in its chain), which is what an operator can act on.
const SILENCED_DEPENDENCIES: [&str; 2] = ["lapin", "amq_protocol"];

/// Whether an event may be written: any of ours, and a dependency's only at `info` or above.
/// Malformed requests, which actix answers with 400 before any of our code runs, are not
/// logged at all: their number is the client's to choose.
pub fn may_log(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    let crate_name = target.split("::").next().unwrap_or(target);
    if OUR_CRATES.contains(&crate_name) {
        return true;
    }
    if target.starts_with("actix_http::h1::dispatcher")
        || SILENCED_DEPENDENCIES.iter().any(|silenced| crate_name.starts_with(silenced))
    {
        return false;
    }
    *metadata.level() <= Level::INFO
}

/// Installs the global subscriber; a second call (as in tests) is ignored.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(lines.json().flatten_event(true).with_current_span(true).with_filter(filter_fn(may_log)))
            .try_init(),
        LogFormat::Pretty => registry.with(lines.with_filter(filter_fn(may_log))).try_init(),
    };
}
