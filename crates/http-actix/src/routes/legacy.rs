//! Paths used by the seed system's gateway and push sender, answered like their `/api/v1`
//! twins, marked deprecated in the OpenAPI document and with `Deprecation: true` (and, for
//! the user, a `Link` to its successor) on every answer.

use actix_web::HttpRequest;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::{Data, Path};
use apistos::{ApiComponent, api_operation};
use domain::auth::Scope;
use domain::user::UserId;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::auth::Caller;
use crate::dto::{DeviceView, UserView};
use crate::envelope::{Ok, OkEncoded};
use crate::error::ApiError;
use crate::extract::{NoQuery, UserIdPath};
use crate::state::AppState;

static DEPRECATION: HeaderName = HeaderName::from_static("deprecation");

/// Marks every answer of a legacy route as deprecated (RFC 9745) and, for the user route,
/// links its successor (RFC 8288) when the id is canonical.
pub async fn deprecation_headers(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let successor = request
        .path()
        .strip_prefix("/users/")
        .and_then(|id| UserId::parse(id).ok())
        .map(|id| format!("</api/v1/users/{id}>; rel=\"successor-version\""));
    let mut response = next.call(request).await?;
    let headers = response.headers_mut();
    headers.insert(DEPRECATION.clone(), HeaderValue::from_static("true"));
    if let Some(link) = successor.and_then(|link| HeaderValue::from_str(&link).ok()) {
        headers.insert(actix_web::http::header::LINK, link);
    }
    Ok(response)
}

/// Get a user (legacy)
///
/// Same as `GET /api/v1/users/{id}`, which the `Link` header names. The seed's gateway calls
/// it without credentials: with `TRUST_INTERNAL_NETWORK` it reads as the service
/// `internal-network` (scope `users.read`).
#[api_operation(
    tag = "legacy",
    deprecated,
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn get_user(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    _no_query: NoQuery,
) -> Result<OkEncoded<UserView>, ApiError> {
    super::users::user(&state, caller.user(id.0, Scope::UsersRead)?).await
}

/// Deactivate a device by token (legacy)
///
/// Same as `PUT /api/v1/users/{id}/devices/{device}/deactivate`, as the seed's push sender
/// reports dead tokens: the token is the raw endpoint URL, slashes and colons included (also
/// with `//` merged to `/`), and for endpoints with a query string (Windows push:
/// `...?token=...`) the rest of the URL arrives as the query, up to the final
/// `/deactivate`. Scope `devices.deactivate`.
#[api_operation(
    tag = "legacy",
    deprecated,
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn deactivate(
    state: Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    user: UserIdPath,
    // Documents the segment; the token is read from the raw path (see `raw_token`).
    _token: Path<TokenSegment>,
) -> Result<Ok<DeviceView>, ApiError> {
    deactivate_raw(&state, &request, &caller, user).await
}

/// The `{token}` segment of the legacy deactivation path.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
pub struct TokenSegment {
    /// The device's token as the push sender sends it: the endpoint URL, unencoded.
    pub token: String,
}

/// The legacy deactivation of an endpoint whose query string holds the `/deactivate` verb
/// (`PUT /api/users/{user_id}/devices/https://…/?token=…/deactivate`); undocumented, as the
/// route above describes it.
#[api_operation(skip)]
pub async fn deactivate_with_query(
    state: Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    user: UserIdPath,
) -> Result<Ok<DeviceView>, ApiError> {
    deactivate_raw(&state, &request, &caller, user).await
}

/// The suffix of every legacy deactivation URL.
const DEACTIVATE: &str = "/deactivate";

/// Rebuilds the token from the URL exactly as the push sender wrote it (raw, not
/// percent-decoded: it sends the endpoint unencoded, and an endpoint may itself hold `%XX`):
/// everything after `/devices/` (`path_tail`), query string included, up to the final
/// `/deactivate`.
fn raw_token(path_tail: &str, query: &str) -> Option<String> {
    let url = if query.is_empty() { path_tail.to_owned() } else { format!("{path_tail}?{query}") };
    url.strip_suffix(DEACTIVATE).map(str::to_owned)
}

async fn deactivate_raw(
    state: &AppState,
    request: &HttpRequest,
    caller: &Caller,
    user: UserIdPath,
) -> Result<Ok<DeviceView>, ApiError> {
    let user = caller.user(user.0, Scope::DevicesDeactivate)?;
    // `/api/users/{user_id}/devices/` is five segments; the rest is the endpoint.
    let path_tail = request.uri().path().splitn(6, '/').nth(5).unwrap_or_default();
    let query = request.uri().query().unwrap_or_default();
    let token = raw_token(path_tail, query).ok_or_else(ApiError::route_not_found)?;
    super::devices::set_active(state, caller, user, &token, false).await
}

#[cfg(test)]
mod tests {
    use super::raw_token;

    #[test]
    fn the_token_runs_up_to_the_final_deactivate_of_path_and_query() {
        let fcm = "https://fcm.googleapis.com/fcm/send/abc:DEF";
        assert_eq!(raw_token(&format!("{fcm}/deactivate"), "").as_deref(), Some(fcm));
        let wns = "https://wns2.notify.windows.com/w/";
        assert_eq!(raw_token(wns, "token=AB%2b%3d/deactivate"), Some(format!("{wns}?token=AB%2b%3d")));
        let odd = "https://h/x/deactivate";
        assert_eq!(raw_token(odd, "token=Q/deactivate").as_deref(), Some("https://h/x/deactivate?token=Q"));
        assert_eq!(raw_token(wns, "token=AB"), None);
        assert_eq!(raw_token(&format!("{fcm}/deactivate"), "extra"), None);
    }
}
