//! The value types of the settings: each reads one variable's text (or number), checks it
//! as it is read, and shows itself with any secret masked. Their errors are phrased to
//! follow the variable's name and never repeat a secret.

use std::net::IpAddr;
use std::time::Duration;

use domain::auth::{Scope, Scopes};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::ServiceKeyConfig;
use crate::auth::client_address::Network;

/// A positive integer of at most `MAX`, written in decimal digits (not `true`, `1e3` or
/// `0.5`): every size and count the service is given has a bound.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(transparent)]
pub(super) struct Positive<T, const MAX: u64 = { u64::MAX }>(pub(super) T);

impl<'de, T: TryFrom<u64>, const MAX: u64> Deserialize<'de> for Positive<T, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let invalid = || {
            let reason = if MAX == u64::MAX {
                "must be a positive integer".to_owned()
            } else {
                format!("must be a positive integer, at most {MAX}")
            };
            serde::de::Error::custom(reason)
        };
        let text = String::deserialize(deserializer).map_err(|_| invalid())?;
        // Digits only: `parse` would also take a sign.
        if !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        let count: u64 = text.parse().map_err(|_| invalid())?;
        if count == 0 || count > MAX {
            return Err(invalid());
        }
        T::try_from(count).map(Self).map_err(|_| invalid())
    }
}

/// Declares a positive duration counted in one unit, of at most `$max` units: read and
/// shown as that count.
macro_rules! duration_in {
    ($name:ident, $unit:literal, $millis_per_unit:literal, $max:expr) => {
        #[doc = concat!("A positive duration in ", $unit, ", bounded.")]
        #[derive(Debug, Clone, Copy)]
        pub(super) struct $name(pub(super) Duration);

        impl $name {
            pub(super) const fn of(count: u64) -> Self {
                Self(Duration::from_millis(count.saturating_mul($millis_per_unit)))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Positive::<u64, { $max }>::deserialize(deserializer).map(|Positive(count)| Self::of(count))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_u128(self.0.as_millis() / $millis_per_unit)
            }
        }
    };
}

// Ten years of seconds, an hour of milliseconds, ten years of days: more than any lifetime,
// window or timeout needs, and far from the arithmetic limits of the times they are added to.
duration_in!(Seconds, "seconds", 1000, 315_360_000);
duration_in!(Millis, "milliseconds", 1, 3_600_000);

/// A positive number of days, at most ten years' worth.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(transparent)]
pub(super) struct Days(pub(super) u64);

impl<'de> Deserialize<'de> for Days {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Positive::<u64, 3_650>::deserialize(deserializer).map(|Positive(days)| Self(days))
    }
}

/// Implements `Deserialize` for a type read from one string by `TryFrom<String>` (whose
/// error is the reason, phrased after the variable's name) and `Serialize` by a function
/// that shows it, secrets masked.
macro_rules! read_from_text {
    ($name:ident, |$value:ident| $show:expr) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::try_from(text).map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let $value = self;
                serializer.serialize_str(&$show)
            }
        }
    };
}

/// `HOST`: an IP address to listen on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Host(pub(super) IpAddr);

impl TryFrom<String> for Host {
    type Error = &'static str;

    fn try_from(address: String) -> Result<Self, Self::Error> {
        address.parse().map(Self).map_err(|_| "must be an IP address, such as 0.0.0.0 or ::")
    }
}

read_from_text!(Host, |host| host.0.to_string());

/// `PORT`: 0 (any free port) to 65535.
#[derive(Debug, Clone, Copy)]
pub(super) struct Port(pub(super) u16);

impl TryFrom<String> for Port {
    type Error = &'static str;

    fn try_from(port: String) -> Result<Self, Self::Error> {
        port.parse().map(Self).map_err(|_| "must be a port number, 0 to 65535")
    }
}

read_from_text!(Port, |port| port.0.to_string());

/// What a secret is shown as.
pub(super) const MASKED: &str = "********";

/// The URL with its secrets masked (the user info's password, `password`/`pass` query
/// values): the same masking as the log lines that name it.
fn mask_password(url: &str) -> String {
    adapters_redis::config::redact_url(url)
}

/// `DATABASE_URL`: `postgres://`, `postgresql://` or the seed's `postgresql+asyncpg://`
/// (rewritten); unset means the embedded SQLite store.
#[derive(Debug, Clone)]
pub(super) struct DatabaseUrl(pub(super) String);

impl TryFrom<String> for DatabaseUrl {
    type Error = &'static str;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        for driver_prefix in ["postgresql+asyncpg://", "postgres+asyncpg://"] {
            if let Some(rest) = url.strip_prefix(driver_prefix) {
                return Ok(Self(format!("postgresql://{rest}")));
            }
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err("must start with postgres:// or postgresql://");
        }
        // This build has no TLS client: refused here rather than failing at the first
        // connection (`prefer`, the driver's default, goes on without TLS).
        let demands_tls = url.split_once('?').is_some_and(|(_, query)| {
            query
                .split('&')
                .any(|pair| matches!(pair.split_once('='), Some(("sslmode", "require" | "verify-ca" | "verify-full"))))
        });
        if demands_tls {
            return Err("asks for TLS (sslmode=require/verify-ca/verify-full), which this build does not speak: \
                 use sslmode=disable on a private network");
        }
        Ok(Self(url))
    }
}

read_from_text!(DatabaseUrl, |url| mask_password(&url.0));

/// `REDIS_URL`: `redis://` or a Unix socket (`rediss://`, TLS, is refused: this build has no
/// TLS client).
#[derive(Debug, Clone)]
pub(super) struct RedisUrl(pub(super) String);

impl TryFrom<String> for RedisUrl {
    type Error = &'static str;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        if url.starts_with("rediss://") {
            Err("is rediss:// (TLS), which this build does not speak: use redis:// on a private network")
        } else if ["redis://", "unix://", "redis+unix://"].iter().any(|scheme| url.starts_with(scheme)) {
            Ok(Self(url))
        } else {
            Err("must start with redis://")
        }
    }
}

read_from_text!(RedisUrl, |url| mask_password(&url.0));

/// `AMQP_URL`: `amqp://`; unset means no broker (events go to the pull feed only).
#[derive(Clone)]
pub(super) struct AmqpUrl(pub(super) SecretString);

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&mask_password(self.0.expose_secret()))
    }
}

impl TryFrom<String> for AmqpUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
            return Err("must start with amqp://".to_owned());
        }
        // What the publisher will parse, checked now: `config --check` and start-up refuse
        // it before migrations run (amqps too: lapin is built without a TLS backend).
        adapters_amqp::check_url(&url)?;
        Ok(Self(SecretString::from(url)))
    }
}

read_from_text!(AmqpUrl, |url| mask_password(url.0.expose_secret()));

/// `AMQP_EXCHANGE`: an exchange name as RabbitMQ accepts it (letters, digits, `-`, `_`,
/// `.`, `:`; at most 127 bytes), not one of the broker's own (`amq.*`).
#[derive(Debug, Clone)]
pub(super) struct ExchangeName(pub(super) String);

impl TryFrom<String> for ExchangeName {
    type Error = &'static str;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        if name.is_empty() || name.len() > 127 || !name.chars().all(allowed) {
            return Err("must be 1 to 127 letters, digits, '-', '_', '.' or ':'");
        }
        if name.starts_with("amq.") {
            return Err("must not start with amq. (reserved by the broker)");
        }
        Ok(Self(name))
    }
}

read_from_text!(ExchangeName, |name| name.0.clone());

/// The seed's example value, which must never sign real tokens.
const PLACEHOLDER_SECRET_KEY: &str = "your_super_secret_key_here";

/// `SECRET_KEY`: at least 32 bytes and not the seed's placeholder.
#[derive(Debug, Clone)]
pub(super) struct SecretKey(pub(super) SecretString);

impl TryFrom<String> for SecretKey {
    type Error = &'static str;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        if key == PLACEHOLDER_SECRET_KEY {
            return Err("must not be the example placeholder; generate a random one");
        }
        if key.len() < 32 {
            return Err("must be at least 32 bytes");
        }
        Ok(Self(SecretString::from(key)))
    }
}

read_from_text!(SecretKey, |_key| MASKED);

/// `METRICS_TOKEN`: at least 16 characters.
#[derive(Debug, Clone)]
pub(super) struct MetricsToken(pub(super) SecretString);

impl TryFrom<String> for MetricsToken {
    type Error = &'static str;

    fn try_from(token: String) -> Result<Self, Self::Error> {
        if token.len() < 16 { Err("must be at least 16 characters") } else { Ok(Self(SecretString::from(token))) }
    }
}

read_from_text!(MetricsToken, |_token| MASKED);

/// `LOG_LEVEL`: a tracing filter such as `info` or `warn,http_actix=debug`.
#[derive(Debug, Clone)]
pub(super) struct LogLevel(pub(super) String);

impl TryFrom<String> for LogLevel {
    type Error = &'static str;

    fn try_from(level: String) -> Result<Self, Self::Error> {
        match tracing_subscriber::EnvFilter::try_new(&level) {
            Ok(_) => Ok(Self(level)),
            Err(_) => Err("must be a level (error, warn, info, debug, trace) or a filter"),
        }
    }
}

read_from_text!(LogLevel, |level| level.0.clone());

/// `TRUSTED_PROXIES`: comma-separated addresses or CIDR ranges.
#[derive(Debug, Clone, Default)]
pub(super) struct TrustedProxies(pub(super) Vec<Network>);

impl TryFrom<String> for TrustedProxies {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value
            .split(',')
            .filter(|entry| !entry.trim().is_empty())
            .map(|entry| {
                Network::parse(entry).ok_or_else(|| format!("has an invalid address or range: {}", entry.trim()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

read_from_text!(TrustedProxies, |proxies| proxies.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(","));

/// `CACHE_INVALIDATE_EXTRA_KEYS`: comma-separated key templates, each containing `{id}`.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyTemplates(pub(super) Vec<String>);

impl TryFrom<String> for KeyTemplates {
    type Error = &'static str;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let templates: Vec<String> =
            value.split(',').map(str::trim).filter(|key| !key.is_empty()).map(str::to_owned).collect();
        if templates.iter().any(|template| !template.contains("{id}")) {
            return Err("templates must each contain {id}");
        }
        Ok(Self(templates))
    }
}

read_from_text!(KeyTemplates, |templates| templates.0.join(","));

/// `REDIS_SENTINELS`, `REDIS_CLUSTER_NODES`: comma-separated `host:port` of Redis Sentinels
/// or Redis Cluster nodes (at most 16).
#[derive(Debug, Clone, Default)]
pub(super) struct HostPorts(pub(super) Vec<(String, u16)>);

impl TryFrom<String> for HostPorts {
    type Error = &'static str;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let invalid = "must be comma-separated host:port pairs, at most 16";
        let sentinels = value
            .split(',')
            .map(str::trim)
            .filter(|sentinel| !sentinel.is_empty())
            .map(|sentinel| {
                let (host, port) = sentinel.rsplit_once(':').ok_or(invalid)?;
                let port: u16 = port.parse().map_err(|_| invalid)?;
                let plain = |byte: u8| byte.is_ascii_alphanumeric() || b".-_".contains(&byte);
                if host.is_empty() || host.len() > 253 || !host.bytes().all(plain) || port == 0 {
                    return Err(invalid);
                }
                Ok((host.to_owned(), port))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A value of commas only names no server: an error, not the default.
        if sentinels.is_empty()
            || sentinels.len() > adapters_redis::config::MAX_SENTINELS.min(adapters_redis::config::MAX_CLUSTER_NODES)
        {
            return Err(invalid);
        }
        Ok(Self(sentinels))
    }
}

read_from_text!(HostPorts, |sentinels| sentinels
    .0
    .iter()
    .map(|(host, port)| format!("{host}:{port}"))
    .collect::<Vec<_>>()
    .join(","));

/// `CACHE_INVALIDATE_EXTRA_DELAYS`: `none`, or up to 5 comma-separated delays such as
/// `250ms,1s,2s`, each above 0 and at most 10 s.
#[derive(Debug, Clone)]
pub(super) struct FollowUpDelays(pub(super) Vec<Duration>);

impl TryFrom<String> for FollowUpDelays {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        use adapters_redis::config::{MAX_EXTRA_INVALIDATION_DELAY, MAX_EXTRA_INVALIDATION_DELAYS};
        let invalid = || {
            format!(
                "must be `none` or up to {MAX_EXTRA_INVALIDATION_DELAYS} comma-separated delays such as 250ms or \
                 2s, each above 0 and at most {} s",
                MAX_EXTRA_INVALIDATION_DELAY.as_secs()
            )
        };
        if value.eq_ignore_ascii_case("none") {
            return Ok(Self(Vec::new()));
        }
        let delays: Vec<Duration> = value
            .split(',')
            .map(|delay| {
                let delay = delay.trim();
                let (digits, unit) = match delay.strip_suffix("ms") {
                    Some(digits) => (digits, Duration::from_millis(1)),
                    None => (delay.strip_suffix('s').ok_or_else(invalid)?, Duration::from_secs(1)),
                };
                let count: u32 = digits.trim().parse().map_err(|_| invalid())?;
                Ok(unit * count)
            })
            .collect::<Result<_, String>>()?;
        if delays.len() > MAX_EXTRA_INVALIDATION_DELAYS
            || delays.iter().any(|delay| delay.is_zero() || *delay > MAX_EXTRA_INVALIDATION_DELAY)
        {
            return Err(invalid());
        }
        Ok(Self(delays))
    }
}

read_from_text!(FollowUpDelays, |delays| if delays.0.is_empty() {
    "none".to_owned()
} else {
    delays.0.iter().map(|delay| format!("{}ms", delay.as_millis())).collect::<Vec<_>>().join(",")
});

/// The shortest service key accepted.
const MIN_SERVICE_KEY_LENGTH: usize = 16;

/// `SERVICE_API_KEYS`, in one of two forms:
/// - plain: comma-separated keys, each with every scope (`KEY1,KEY2`);
/// - named: `;`-separated `name:key:scopes` entries, scopes being `*` or comma-separated
///   scope names (`gateway:KEY1:users.read,eligibility.read;admin:KEY2:*`).
///
/// A value with a `:` is read in the named form. Errors name the entry by position, never
/// by content: it holds a key.
#[derive(Debug, Clone, Default)]
pub(super) struct ServiceKeys(pub(super) Vec<ServiceKeyConfig>);

impl TryFrom<String> for ServiceKeys {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let keys: Vec<ServiceKeyConfig> = if value.contains(':') {
            value
                .split(';')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .enumerate()
                .map(|(index, entry)| named_service_key(index + 1, entry))
                .collect::<Result<_, _>>()?
        } else {
            value
                .split(',')
                .map(str::trim)
                .filter(|key| !key.is_empty())
                .map(|key| ServiceKeyConfig {
                    name: None,
                    key: SecretString::from(key.to_owned()),
                    scopes: Scopes::ALL,
                })
                .collect()
        };
        let mut names = std::collections::HashSet::new();
        let mut digests = std::collections::HashSet::new();
        for (index, key) in keys.iter().enumerate() {
            let secret = secrecy::ExposeSecret::expose_secret(&key.key);
            if secret.len() < MIN_SERVICE_KEY_LENGTH {
                return Err(format!(
                    "entries must each be at least {MIN_SERVICE_KEY_LENGTH} characters (entry {})",
                    index + 1
                ));
            }
            if key.name.as_ref().is_some_and(|name| !names.insert(name.clone())) {
                return Err(format!("names each caller once (entry {})", index + 1));
            }
            if !digests.insert(sha2::Sha256::digest(secret.as_bytes())) {
                return Err(format!("holds the same key twice (entry {})", index + 1));
            }
        }
        Ok(Self(keys))
    }
}

read_from_text!(ServiceKeys, |keys| keys
    .0
    .iter()
    .map(|key| {
        let scopes: Vec<&str> = key.scopes.iter().map(|scope| scope.name()).collect();
        let scopes = if key.scopes == Scopes::ALL { "*".to_owned() } else { scopes.join(",") };
        format!("{}:{MASKED}:{scopes}", key.name.as_deref().unwrap_or("(plain)"))
    })
    .collect::<Vec<_>>()
    .join(";"));

/// One `name:key:scopes` entry of `SERVICE_API_KEYS` (the key may itself contain `:`).
fn named_service_key(position: usize, entry: &str) -> Result<ServiceKeyConfig, String> {
    let malformed = || {
        format!(
            "entry {position} is not name:key:scopes (entries separated by ';', e.g. \
             gateway:KEY:users.read,eligibility.read;admin:KEY2:*)"
        )
    };
    let (name, rest) = entry.split_once(':').ok_or_else(malformed)?;
    let (key, scopes) = rest.rsplit_once(':').ok_or_else(malformed)?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_.-".contains(&byte));
    if !valid_name {
        return Err(format!("entry {position}: a caller's name is 1 to 64 letters, digits, '_', '.' or '-'"));
    }
    // The error names the entry by position only: a plain key that happens to hold two ':'
    // is read in this form, and its pieces must not reach a log.
    let scopes = Scopes::parse(scopes).map_err(|_| {
        let known: Vec<&str> = Scope::ALL.iter().map(|scope| scope.name()).collect();
        format!(
            "entry {position}: the scopes after the last ':' must be * or comma-separated names among {} (a \
             plain key that contains ':' must be written name:key:*)",
            known.join(", ")
        )
    })?;
    Ok(ServiceKeyConfig { name: Some(name.to_owned()), key: SecretString::from(key.trim().to_owned()), scopes })
}
