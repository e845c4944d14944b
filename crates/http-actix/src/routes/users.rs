//! `/api/v1/users`: register, read, change, erase and list users.

use actix_web::web::{Data, Path, Query};
use apistos::api_operation;
use domain::user::{PageRequest, UserId};
use domain::{FieldError, InvalidValue};
use uuid::Uuid;

use crate::dto::{PageQuery, RegisterUserRequest, UpdateContactRequest, UserView};
use crate::envelope::{Created, NoContent, Ok, PageMeta};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::startup::AppState;

/// Register a user
///
/// Creates the user with default preferences (email and push on, no quiet hours, UTC),
/// overridden by `preferences`, in one transaction. The email is trimmed and lower-cased; a
/// taken email (compared case-insensitively) is 409. The password is stored as an argon2id
/// hash. A `push_token` registers a device of platform `unknown`. Also at `/api/v1/users`.
#[api_operation(
    tag = "users",
    error_code = 400,
    error_code = 409,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn register(
    state: Data<AppState>,
    body: JsonBody<RegisterUserRequest>,
) -> Result<Created<UserView>, ApiError> {
    let new_user = body.0.into_domain()?;
    let profile = state.service.register(new_user).await?;
    let location = format!("/api/v1/users/{}", profile.user.id);
    Ok(Created::new(UserView::from(&profile), "user registered", location))
}

/// Get a user
///
/// The user with preferences, `push_token` (the most recently seen active device's),
/// `push_tokens` and `devices` (active first, most recently seen first).
#[api_operation(tag = "users", error_code = 400, error_code = 404, error_code = 503)]
pub async fn get(state: Data<AppState>, id: Path<Uuid>) -> Result<Ok<UserView>, ApiError> {
    user(&state, id.into_inner()).await
}

/// Loads one user's view; shared by the v1 and legacy routes.
pub(crate) async fn user(state: &AppState, id: Uuid) -> Result<Ok<UserView>, ApiError> {
    let profile = state.service.profile(UserId::from(id)).await?;
    Ok(Ok::new(UserView::from(&profile), "user retrieved"))
}

/// Change contact details
///
/// `name`, `email` and `phone` are each optional; `"phone": null` removes the phone number.
/// A taken email is 409.
#[api_operation(
    tag = "users",
    error_code = 400,
    error_code = 404,
    error_code = 409,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn update_contact(
    state: Data<AppState>,
    id: Path<Uuid>,
    body: JsonBody<UpdateContactRequest>,
) -> Result<Ok<UserView>, ApiError> {
    let update = body.0.into_domain()?;
    let profile = state.service.update_contact(UserId::from(id.into_inner()), update).await?;
    Ok(Ok::new(UserView::from(&profile), "user updated"))
}

/// Erase a user
///
/// Deletes the user with its preferences and devices.
#[api_operation(tag = "users", error_code = 400, error_code = 404, error_code = 503)]
pub async fn delete(state: Data<AppState>, id: Path<Uuid>) -> Result<NoContent, ApiError> {
    state.service.delete(UserId::from(id.into_inner())).await?;
    Ok(NoContent)
}

/// List users
///
/// Users in registration order, `limit` (1–100, default 20) per page, with pagination
/// `meta`. Also at `/api/v1/users/`.
#[api_operation(tag = "users", error_code = 400, error_code = 422, error_code = 503)]
pub async fn list(state: Data<AppState>, query: Query<PageQuery>) -> Result<Ok<Vec<UserView>>, ApiError> {
    let query = query.into_inner();
    let page = PageRequest::new(query.page.unwrap_or(1), query.limit.unwrap_or(20)).map_err(
        |(field, error): (&'static str, InvalidValue)| ApiError::validation(vec![FieldError::new(field, error)]),
    )?;
    let result = state.service.list(page).await?;
    let meta = PageMeta::new(result.total, page.page(), page.limit());
    Ok(Ok::page(result.items.iter().map(UserView::from).collect(), "users retrieved", meta))
}
