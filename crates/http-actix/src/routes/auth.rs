//! `/api/v1/auth/login`: access tokens for end users.

use actix_web::HttpRequest;
use actix_web::web::Data;
use apistos::{ApiComponent, api_operation};
use domain::auth::Authenticated;
use domain::user::{EmailAddress, Password};
use domain::{FieldError, InvalidValue};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::MaybeCaller;
use crate::envelope::Ok;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::AppState;

/// Login credentials.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct LoginRequest {
    /// The account's email address.
    pub email: String,
    /// The password.
    pub password: String,
}

/// An access token.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct TokenView {
    /// Send as `Authorization: Bearer <access_token>`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The user the token is for.
    pub user_id: Uuid,
}

impl TokenView {
    /// Issues a token for an authenticated user.
    pub fn issue(state: &AppState, authenticated: Authenticated) -> Self {
        let now = state.service.now().unix_timestamp();
        let tokens = &state.auth.tokens;
        Self {
            access_token: tokens.issue(authenticated.user_id.as_uuid(), authenticated.token_version, now),
            token_type: "Bearer",
            expires_in: tokens.ttl().as_secs(),
            user_id: authenticated.user_id.as_uuid(),
        }
    }
}

/// Log in
///
/// Exchanges an email and password for an access token (HS256 JWT with `sub`, `iat`, `exp`,
/// `iss`, `aud`). An unknown email and a wrong password get the same 401 in about the same
/// time. Guessing is capped without letting anyone lock the owner out: after
/// `LOGIN_MAX_FAILURES` attempts at one account from one address without a success, that
/// address gets 429 for the account; after `LOGIN_ACCOUNT_MAX_FAILURES` attempts from
/// addresses new to the account, those share one attempt per `LOGIN_SLOWED_INTERVAL_SECONDS`,
/// while addresses that logged in to it before keep working. Too many attempts from one
/// address are 429 too. 429 carries `Retry-After`.
#[api_operation(
    tag = "auth",
    no_security,
    skip_args = "request",
    error_code = 400,
    error_code = 401,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 429,
    error_code = 503
)]
pub async fn login(
    state: Data<AppState>,
    request: HttpRequest,
    caller: MaybeCaller,
    body: JsonBody<LoginRequest>,
) -> Result<Ok<TokenView>, ApiError> {
    let JsonBody(credentials, _) = body;
    let email = EmailAddress::parse(&credentials.email);
    let password = Password::parse(&credentials.password);
    let (email, password) = match (email, password) {
        (Result::Ok(email), Result::Ok(password)) => (email, password),
        (email, password) => {
            let errors = [("email", email.err()), ("password", password.err())]
                .into_iter()
                .filter_map(|(field, error): (&'static str, Option<InvalidValue>)| {
                    error.map(|error| FieldError::new(field, error))
                })
                .collect();
            return Err(ApiError::validation(errors));
        }
    };
    state.limits.per_address(caller.0.as_ref(), &request, "login").await?;
    let attempt = state.limits.login_attempt(email.as_str(), &request);
    state.limits.guard.admit(&attempt).await?;
    let authenticated = state.service.login(&email, password).await?;
    state.limits.guard.record_success(&attempt).await;
    Ok(Ok::new(TokenView::issue(&state, authenticated), "logged in"))
}
