//! Authentication: who is calling. Service callers present `X-Service-Key` (compared in
//! constant time with `SERVICE_API_KEYS`, each key with a name and scopes); end users present
//! `Authorization: Bearer` with an access token from `/api/v1/auth/login`. With
//! `TRUST_INTERNAL_NETWORK`, calls without any credential act as the service
//! `internal-network`, with only the scopes of the seed's two credential-less clients. A
//! credential that is present but wrong is always 401, never silently ignored.
//!
//! What each principal may do is the domain's rule (`domain::auth::Principal`); each
//! handler names the [`Scope`] its route needs when it authorizes the caller.

pub mod client_address;
pub mod credentials;
pub mod failure_log;
pub mod token;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderName};
use actix_web::web::Data;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use apistos::ApiComponent;
use apistos::Schema;
use apistos::reference_or::ReferenceOr;
use domain::auth::{Principal, Scope, Scopes, ServiceProof};
use domain::consent::Provenance;
use domain::user::UserId;

use crate::error::ApiError;
use crate::middleware::RequestId;
use crate::state::AppState;
use credentials::bearer_credential;
pub use credentials::{AuthSettings, INTERNAL_NETWORK, MetricsToken, ResolvedCaller, ServiceKeys};
pub use token::TokenKeys;

/// The header carrying a service key.
pub static SERVICE_KEY: HeaderName = HeaderName::from_static("x-service-key");

/// Resolves the caller of a request: `Ok(None)` when it presented no credential.
async fn resolve(state: &AppState, request: &HttpRequest) -> Result<Option<Principal>, ApiError> {
    let auth = &state.auth;
    let headers = request.headers();
    // Two credentials (two keys, two tokens, or one of each, as a proxy that appends headers
    // may send) are refused, never resolved by picking one.
    if headers.get_all(&SERVICE_KEY).count() + headers.get_all(header::AUTHORIZATION).count() > 1 {
        return Err(ApiError::invalid_credential(
            "ambiguous_credential",
            "the request carried more than one credential (X-Service-Key and Authorization, or one of them \
             twice): send exactly one; a proxy may be adding a header of its own",
        ));
    }
    if let Some(key) = headers.get(&SERVICE_KEY) {
        return auth.service_keys.identify(key.as_bytes()).map(Some).ok_or_else(|| {
            ApiError::invalid_credential(
                "unknown_service_key",
                "X-Service-Key matches none of SERVICE_API_KEYS: compare the caller's key with the configured \
                 ones (exact bytes: no quotes, spaces or line breaks)",
            )
        });
    }
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token =
            bearer_credential(value.as_bytes()).and_then(|token| std::str::from_utf8(token).ok()).ok_or_else(|| {
                ApiError::invalid_credential(
                    "malformed_authorization",
                    "Authorization must be `Bearer <access token>` from POST /api/v1/auth/login; services send \
                     X-Service-Key instead",
                )
            })?;
        let invalid_token = || {
            ApiError::invalid_credential(
                "invalid_access_token",
                "the bearer token is malformed, expired, signed with another SECRET_KEY (did it change, or \
                 differ between instances?), or revoked by a password change or the user's erasure: the user \
                 logs in again",
            )
        };
        let now = state.service.now().unix_timestamp();
        let claims = auth.tokens.verify(token, now).map_err(|error| {
            tracing::debug!(%error, "access token refused");
            invalid_token()
        })?;
        let user = UserId::from(claims.sub);
        // A password change (or the user's deletion) revokes earlier tokens.
        return match state.service.token_version(user).await? {
            Some(version) if version == claims.ver => Ok(Some(Principal::User(user))),
            _ => Err(invalid_token()),
        };
    }
    if auth.trust_internal_network {
        return Ok(Some(Principal::Service {
            name: Arc::clone(&INTERNAL_NETWORK_NAME),
            scopes: Scopes::INTERNAL_NETWORK,
            proof: ServiceProof::Network,
        }));
    }
    Ok(None)
}

/// [`INTERNAL_NETWORK`], shared by every call the network vouches for (the seed's gateway
/// and push sender call without credentials: these are most calls behind it).
static INTERNAL_NETWORK_NAME: LazyLock<Arc<str>> = LazyLock::new(|| INTERNAL_NETWORK.into());

type ResolveFuture<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

/// Resolves the caller and names it on the request for the log line; also reads the
/// request's id, for the provenance of the changes the request makes.
fn resolve_request(request: &HttpRequest) -> ResolveFuture<(Option<Principal>, Option<RequestId>)> {
    let request = request.clone();
    Box::pin(async move {
        let state = request
            .app_data::<Data<AppState>>()
            .ok_or_else(|| ApiError::internal("the application state is missing".into()))?;
        let principal = resolve(state, &request).await?;
        if let Some(principal) = &principal {
            request.extensions_mut().insert(ResolvedCaller(principal.clone()));
        }
        let request_id = request.extensions().get::<RequestId>().cloned();
        Ok((principal, request_id))
    })
}

/// An authenticated caller; a request without credentials is refused with 401. Handlers
/// authorize it for what their route does with [`Caller::user`].
#[derive(Debug, Clone)]
pub struct Caller(pub Principal, Option<RequestId>);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = ResolveFuture<Self>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let resolving = resolve_request(request);
        Box::pin(async move {
            let (principal, request_id) = resolving.await?;
            Ok(Caller(principal.ok_or_else(ApiError::authentication_required)?, request_id))
        })
    }
}

impl Caller {
    /// The user `id` names, if the caller may do what `scope` covers on that user's data
    /// (403 naming what is missing, if not).
    pub fn user(&self, id: UserId, scope: Scope) -> Result<UserId, ApiError> {
        self.0.authorize_for_user(id, scope).map_err(ApiError::forbidden)?;
        Ok(id)
    }

    /// Who asks, in which request: what the consent history records of its changes.
    pub fn provenance(&self) -> Provenance {
        Provenance { actor: Some(self.0.actor()), request_id: self.1.as_ref().map(RequestId::to_text) }
    }
}

/// The caller if it presented a credential (public routes such as registration).
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Option<Principal>, Option<RequestId>);

impl FromRequest for MaybeCaller {
    type Error = ApiError;
    type Future = ResolveFuture<Self>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let resolving = resolve_request(request);
        Box::pin(async move { resolving.await.map(|(principal, request_id)| MaybeCaller(principal, request_id)) })
    }
}

impl MaybeCaller {
    /// Who registers, in which request: a caller without a credential of its own (none, or
    /// only the network's vouching, as when the gateway forwards an app's registration) is
    /// the user registering itself; a key or a token names its holder.
    pub fn registration_provenance(&self) -> Provenance {
        let actor = self.0.as_ref().filter(|caller| caller.holds_credential()).map(Principal::actor);
        Provenance { actor, request_id: self.1.as_ref().map(RequestId::to_text) }
    }
}

/// A caller of a route across users (lists, bulk routes): 401 without credentials; handlers
/// authorize it with [`ServiceCaller::authorize`] (403 for end users and for services
/// without the route's scope).
#[derive(Debug, Clone)]
pub struct ServiceCaller(Principal, Option<RequestId>);

impl FromRequest for ServiceCaller {
    type Error = ApiError;
    type Future = ResolveFuture<Self>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let resolving = resolve_request(request);
        Box::pin(async move {
            let (principal, request_id) = resolving.await?;
            Ok(ServiceCaller(principal.ok_or_else(ApiError::authentication_required)?, request_id))
        })
    }
}

impl ServiceCaller {
    /// Checks that the caller is a service holding `scope`.
    pub fn authorize(&self, scope: Scope) -> Result<(), ApiError> {
        self.0.authorize_across_users(scope).map_err(ApiError::forbidden)
    }

    /// As [`Caller::provenance`].
    pub fn provenance(&self) -> Provenance {
        Provenance { actor: Some(self.0.actor()), request_id: self.1.as_ref().map(RequestId::to_text) }
    }
}

/// A caller that must be an end user (changing one's own password): 401 without
/// credentials, 403 for services.
#[derive(Debug, Clone)]
pub struct UserCaller(pub Principal);

impl FromRequest for UserCaller {
    type Error = ApiError;
    type Future = ResolveFuture<Self>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let resolving = resolve_request(request);
        Box::pin(async move { Ok(UserCaller(resolving.await?.0.ok_or_else(ApiError::authentication_required)?)) })
    }
}

impl UserCaller {
    /// `user`, if the caller is that user itself.
    pub fn owner(&self, user: UserId) -> Result<UserId, ApiError> {
        self.0.require_owner(user).map_err(ApiError::forbidden)?;
        Ok(user)
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
