//! `/api/v1/users/{id}/preferences`: per-channel opt-in and quiet hours.

use actix_web::web::Data;
use apistos::api_operation;
use domain::auth::Scope;

use crate::auth::Caller;
use crate::dto::{PreferencesOverviewView, PreferencesRequest, PreferencesView};
use crate::envelope::Ok;
use crate::error::ApiError;
use crate::extract::{JsonBody, UserIdPath};
use crate::state::AppState;

/// Get preferences
///
/// The global channel switches (`email`, `push`: what the seed's gateway reads), quiet hours
/// and time zone, and `categories`: every category of the catalogue by key, with the
/// user's setting in it (`source: user` when the user chose, `default` when the category's
/// defaults apply). Scope `users.read`.
#[api_operation(
    tag = "preferences",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn get(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
) -> Result<Ok<PreferencesOverviewView>, ApiError> {
    let overview = state.service.preferences(caller.user(id.0, Scope::UsersRead)?).await?;
    Ok(Ok::new(PreferencesOverviewView::from(&overview), "preferences retrieved"))
}

/// Update preferences
///
/// Every field is optional and an omitted field keeps its value. Quiet hours are set
/// together (`HH:MM`, in `timezone`, may wrap midnight, start ≠ end) or cleared together
/// (`null`, `null`). Channel flags must be JSON booleans. Scope `preferences.write`.
#[api_operation(
    tag = "preferences",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn update(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    body: JsonBody<PreferencesRequest>,
) -> Result<Ok<PreferencesView>, ApiError> {
    let user = caller.user(id.0, Scope::PreferencesWrite)?;
    let update = body.0.into_domain()?;
    let preferences = state.service.update_preferences(user, update, caller.provenance()).await?;
    Ok(Ok::new(PreferencesView::from(&preferences), "preferences updated"))
}
