//! The credentials the service accepts (service keys, the metrics token) and how callers
//! authenticate ([`AuthSettings`]): plain data the application state holds and the
//! extractors in the parent module read.

use std::sync::Arc;

use actix_web::HttpRequest;
use actix_web::http::header;
use domain::auth::{Principal, Scopes, ServiceProof};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::token::TokenKeys;
use crate::config::ServiceKeyConfig;
use crate::error::ApiError;

/// The name of callers the network vouches for (`TRUST_INTERNAL_NETWORK`).
pub const INTERNAL_NETWORK: &str = "internal-network";

/// One accepted key: its SHA-256 digest (the key itself is not kept), name and scopes.
#[derive(Clone)]
struct AcceptedKey {
    digest: [u8; 32],
    name: Arc<str>,
    scopes: Scopes,
}

/// The accepted service keys.
#[derive(Clone, Default)]
pub struct ServiceKeys {
    keys: Vec<AcceptedKey>,
}

impl std::fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|key| &*key.name).collect();
        f.debug_struct("ServiceKeys").field("names", &names).finish()
    }
}

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

impl ServiceKeys {
    /// Accepts these keys. A key configured without a name is named `key-` and the first
    /// bytes of its digest, which identify it without revealing it.
    pub fn new(keys: &[ServiceKeyConfig]) -> Self {
        let keys = keys
            .iter()
            .map(|config| {
                let digest = digest(config.key.expose_secret().as_bytes());
                let name = config.name.clone().unwrap_or_else(|| {
                    let prefix: String = digest[..4].iter().map(|byte| format!("{byte:02x}")).collect();
                    format!("key-{prefix}")
                });
                AcceptedKey { digest, name: name.into(), scopes: config.scopes }
            })
            .collect();
        Self { keys }
    }

    /// The names and scopes of the accepted keys, for the start-up log.
    pub fn describe(&self) -> Vec<String> {
        self.keys.iter().map(|key| format!("{} ({})", key.name, key.scopes)).collect()
    }

    /// The service the presented key belongs to, comparing with every key in constant time
    /// so that timing reveals neither which key nor how much of one matched.
    pub fn identify(&self, presented: &[u8]) -> Option<Principal> {
        let presented = digest(presented);
        let mut matched = None;
        for candidate in &self.keys {
            if bool::from(candidate.digest.ct_eq(&presented)) {
                matched = Some(candidate);
            }
        }
        matched.map(|key| Principal::Service { name: key.name.clone(), scopes: key.scopes, proof: ServiceProof::Key })
    }
}

/// The bearer token that `/metrics` requires (`METRICS_TOKEN`), kept as its digest and
/// compared in constant time.
#[derive(Clone)]
pub struct MetricsToken([u8; 32]);

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(***)")
    }
}

impl MetricsToken {
    /// Accepts `token`.
    pub fn new(token: &secrecy::SecretString) -> Self {
        Self(digest(token.expose_secret().as_bytes()))
    }

    /// Whether `request` carries `Authorization: Bearer <token>` (401 if not).
    pub fn check(&self, request: &HttpRequest) -> Result<(), ApiError> {
        const HINT: &str = "/metrics needs Authorization: Bearer <METRICS_TOKEN>: give the scraper the configured \
                            token (Prometheus: `authorization: {credentials: ...}` in the scrape config)";
        let mut values = request.headers().get_all(header::AUTHORIZATION);
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(ApiError::authentication_required().with_auth_failure("missing_metrics_token", HINT));
        };
        let presented = bearer_credential(value.as_bytes()).unwrap_or_default();
        if bool::from(digest(presented).ct_eq(&self.0)) {
            Ok(())
        } else {
            Err(ApiError::invalid_credential("invalid_metrics_token", HINT))
        }
    }
}

/// The credential of an `Authorization: Bearer <credential>` value (the scheme is
/// case-insensitive, RFC 9110), or `None` for another scheme.
pub(crate) fn bearer_credential(value: &[u8]) -> Option<&[u8]> {
    let (scheme, credential) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| credential.trim_ascii())
}

/// How callers authenticate.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Accepted service keys.
    pub service_keys: ServiceKeys,
    /// Access-token keys.
    pub tokens: TokenKeys,
    /// Whether calls without credentials act as [`INTERNAL_NETWORK`].
    pub trust_internal_network: bool,
}

/// The resolved caller, kept on the request for its log line, which names it (never its
/// credential) with [`Principal`]'s `Display` only when the line is written.
#[derive(Debug, Clone)]
pub struct ResolvedCaller(pub Principal);

#[cfg(test)]
mod tests {
    use domain::auth::Scope;
    use secrecy::SecretString;

    use super::*;

    fn key(name: Option<&str>, key: &str, scopes: Scopes) -> ServiceKeyConfig {
        ServiceKeyConfig { name: name.map(str::to_owned), key: SecretString::from(key.to_owned()), scopes }
    }

    #[test]
    fn only_configured_service_keys_are_identified_with_their_name_and_scopes() {
        let reader = Scopes::of(&[Scope::UsersRead]);
        let keys = ServiceKeys::new(&[
            key(Some("gateway"), "gateway-key-0123456789", reader),
            key(None, "sender-key-0123456789", Scopes::ALL),
        ]);
        let Some(Principal::Service { name, scopes, proof }) = keys.identify(b"gateway-key-0123456789") else {
            panic!("the gateway's key is accepted");
        };
        assert_eq!((&*name, scopes, proof), ("gateway", reader, ServiceProof::Key));
        let Some(Principal::Service { name, scopes, .. }) = keys.identify(b"sender-key-0123456789") else {
            panic!("the unnamed key is accepted");
        };
        assert!(name.starts_with("key-") && name.len() == 12 && !"sender-key-0123456789".contains(&name[4..]));
        assert_eq!(scopes, Scopes::ALL);
        assert_eq!(keys.identify(b"gateway-key-012345678"), None);
        assert_eq!(keys.identify(b""), None);
        assert_eq!(ServiceKeys::default().identify(b"anything"), None);
        let described = keys.describe().join("; ");
        assert!(described.contains("gateway (users.read)") && !described.contains("0123456789"), "{described}");
    }
}
