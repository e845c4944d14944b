//! Authentication: who is calling. Service callers present `X-Service-Key` (compared in
//! constant time with `SERVICE_API_KEYS`); end users present `Authorization: Bearer` with
//! an access token from `/api/v1/auth/login`. With `TRUST_INTERNAL_NETWORK`, calls without
//! any credential act as a service caller. A credential that is present but wrong is
//! always 401, never silently ignored.
//!
//! What each principal may do is the domain's rule (`domain::auth::Principal`).

pub mod client_address;
pub mod token;

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderName};
use actix_web::web::Data;
use actix_web::{FromRequest, HttpRequest};
use apistos::ApiComponent;
use apistos::Schema;
use apistos::reference_or::ReferenceOr;
use domain::auth::Principal;
use domain::user::UserId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::startup::AppState;
pub use token::TokenKeys;

/// The header carrying a service key.
pub static SERVICE_KEY: HeaderName = HeaderName::from_static("x-service-key");

/// The accepted service keys, kept only as SHA-256 digests.
#[derive(Clone, Default)]
pub struct ServiceKeys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKeys").field("count", &self.digests.len()).finish()
    }
}

fn digest(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

impl ServiceKeys {
    /// Accepts these keys.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self { digests: keys.into_iter().map(|key| digest(key.as_bytes())).collect() }
    }

    /// The non-secret name of the matching key (the first bytes of its digest), comparing
    /// with every key in constant time so that timing reveals neither which key nor how
    /// much of one matched.
    pub fn identify(&self, presented: &[u8]) -> Option<String> {
        let presented = digest(presented);
        let mut matched = None;
        for candidate in &self.digests {
            if bool::from(candidate.ct_eq(&presented)) {
                matched = Some(candidate);
            }
        }
        matched.map(|digest| digest[..4].iter().map(|byte| format!("{byte:02x}")).collect())
    }
}

/// How callers authenticate.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Accepted service keys.
    pub service_keys: ServiceKeys,
    /// Access-token keys.
    pub tokens: TokenKeys,
    /// Whether calls without credentials act as a service caller.
    pub trust_internal_network: bool,
}

/// Resolves the caller of a request: `Ok(None)` when it presented no credential.
async fn resolve(state: &AppState, request: &HttpRequest) -> Result<Option<Principal>, ApiError> {
    let auth = &state.auth;
    if let Some(key) = request.headers().get(&SERVICE_KEY) {
        let credential = auth.service_keys.identify(key.as_bytes()).ok_or_else(ApiError::invalid_credential)?;
        return Ok(Some(Principal::Service { credential }));
    }
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .ok_or_else(ApiError::invalid_credential)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = auth.tokens.verify(token.trim(), now).map_err(|error| {
            tracing::debug!(%error, "access token refused");
            ApiError::invalid_credential()
        })?;
        let user = UserId::from(claims.sub);
        // A password change (or the user's deletion) revokes earlier tokens.
        match state.service.token_version(user).await? {
            Some(version) if version == claims.ver => return Ok(Some(Principal::User(user))),
            _ => return Err(ApiError::invalid_credential()),
        }
    }
    if auth.trust_internal_network {
        return Ok(Some(Principal::Service { credential: "internal-network".to_owned() }));
    }
    Ok(None)
}

type ResolveFuture<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

fn resolve_request(request: &HttpRequest) -> ResolveFuture<Option<Principal>> {
    let request = request.clone();
    Box::pin(async move {
        let state = request
            .app_data::<Data<AppState>>()
            .ok_or_else(|| ApiError::internal("the application state is missing".into()))?;
        resolve(state, &request).await
    })
}

/// An authenticated caller; a request without credentials is refused with 401.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = ResolveFuture<Self>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let resolving = resolve_request(request);
        Box::pin(async move { resolving.await?.map(Caller).ok_or_else(ApiError::authentication_required) })
    }
}

/// The caller if it presented a credential (public routes such as registration).
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Option<Principal>);

impl FromRequest for MaybeCaller {
    type Error = ApiError;
    type Future = ResolveFuture<Self>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let resolving = resolve_request(request);
        Box::pin(async move { resolving.await.map(MaybeCaller) })
    }
}

impl Caller {
    /// The user `id` names, if the caller may read or change that user's data (403 if not).
    pub fn user(&self, id: uuid::Uuid) -> Result<UserId, ApiError> {
        let user = UserId::from(id);
        self.0.may_access(user).map_err(ApiError::forbidden)?;
        Ok(user)
    }
}

/// A caller that must be a service (lists and bulk routes): 401 without credentials, 403
/// for end users.
#[derive(Debug, Clone)]
pub struct ServiceCaller(pub Principal);

impl FromRequest for ServiceCaller {
    type Error = ApiError;
    type Future = ResolveFuture<Self>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let resolving = resolve_request(request);
        Box::pin(async move {
            let principal = resolving.await?.ok_or_else(ApiError::authentication_required)?;
            principal.require_service().map_err(ApiError::forbidden)?;
            Ok(ServiceCaller(principal))
        })
    }
}

/// A caller that must be an end user (changing one's own password): 401 without
/// credentials, 403 for services.
#[derive(Debug, Clone)]
pub struct UserCaller(pub UserId);

impl FromRequest for UserCaller {
    type Error = ApiError;
    type Future = ResolveFuture<Self>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let resolving = resolve_request(request);
        Box::pin(async move {
            match resolving.await?.ok_or_else(ApiError::authentication_required)? {
                Principal::User(user) => Ok(UserCaller(user)),
                Principal::Service { .. } => Err(ApiError::forbidden(domain::auth::AccessDenied)),
            }
        })
    }
}

/// Documents an extractor: no schema, and the security scheme it requires (`None` leaves
/// the document's default, either scheme).
macro_rules! caller_component {
    ($extractor:ty, $scheme:expr) => {
        impl ApiComponent for $extractor {
            fn child_schemas() -> Vec<(String, ReferenceOr<Schema>)> {
                Vec::new()
            }

            fn schema() -> Option<(String, ReferenceOr<Schema>)> {
                None
            }

            fn security_requirement_name() -> Option<String> {
                $scheme.map(str::to_owned)
            }
        }
    };
}
caller_component!(Caller, None::<&str>);
caller_component!(MaybeCaller, None::<&str>);
caller_component!(ServiceCaller, Some("ServiceKey"));
caller_component!(UserCaller, Some("BearerAuth"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_service_keys_are_identified_by_a_stable_non_secret_name() {
        let keys = ServiceKeys::new(["gateway-key-0123456789", "sender-key-0123456789"]);
        let gateway = keys.identify(b"gateway-key-0123456789").unwrap();
        assert_eq!(gateway.len(), 8);
        assert!(!"gateway-key-0123456789".contains(&gateway));
        assert_ne!(Some(gateway), keys.identify(b"sender-key-0123456789"));
        assert_eq!(keys.identify(b"gateway-key-012345678"), None);
        assert_eq!(keys.identify(b""), None);
        assert_eq!(ServiceKeys::default().identify(b"anything"), None);
    }
}
