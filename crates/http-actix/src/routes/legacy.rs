//! Paths used by the existing gateway and push sender, answered exactly like their
//! `/api/v1` twins and marked deprecated in the OpenAPI document.

use actix_web::web::{Data, Path};
use apistos::api_operation;
use uuid::Uuid;

use crate::auth::Caller;
use crate::dto::{DeviceView, UserView};
use crate::envelope::{Ok, OkEncoded};
use crate::error::ApiError;
use crate::startup::AppState;

/// Get a user (legacy)
///
/// Same as `GET /api/v1/users/{id}`.
#[api_operation(
    tag = "legacy",
    deprecated,
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn get_user(state: Data<AppState>, caller: Caller, id: Path<Uuid>) -> Result<OkEncoded<UserView>, ApiError> {
    super::users::user(&state, caller.user(id.into_inner())?).await
}

/// Deactivate a device by token (legacy)
///
/// Same as `PUT /api/v1/users/{id}/devices/{device}/deactivate`. The token is the raw
/// web-push endpoint URL, slashes and colons included (also with `//` merged to `/`).
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
    caller: Caller,
    path: Path<(Uuid, String)>,
) -> Result<Ok<DeviceView>, ApiError> {
    let (user, token) = path.into_inner();
    super::devices::set_active(&state, caller.user(user)?, &token, false).await
}
