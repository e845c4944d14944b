//! `/api/v1/users`: register, read, change, erase and list users.

use actix_web::HttpRequest;
use actix_web::web::{Data, Query};
use apistos::api_operation;
use domain::auth::{Principal, Scope};
use domain::idempotency::{Idempotent, StoredResponse};
use domain::ports::CreatedUser;
use domain::user::{PageRequest, UserId};
use domain::{FieldError, InvalidValue};

use crate::auth::{Caller, MaybeCaller, ServiceCaller, UserCaller};
use crate::dto::{ChangePasswordRequest, PageQuery, RegisterUserRequest, UpdateContactRequest, UserView};
use crate::envelope::{NoContent, Ok, OkEncoded, PageMeta, success_bytes};
use crate::error::ApiError;
use crate::extract::{JsonBody, NoQuery, UserIdPath};
use crate::idempotency::{IdempotencyKeyHeader, Replayable};
use crate::routes::auth::TokenView;
use crate::state::AppState;

/// Register a user
///
/// Creates the user with default preferences (email and push on, no quiet hours, UTC),
/// overridden by `preferences`, in one transaction. The email is trimmed and lower-cased; a
/// taken email (compared case-insensitively) is 409. The password is stored as an argon2id
/// hash. A `push_token` registers a device of platform `unknown`; if another user holds that
/// token, it moves to the new user only when a service with `devices.write` registers, and is
/// otherwise left with its owner (the user is registered without it, and the message says
/// so). Also at `/api/v1/users`.
#[api_operation(
    tag = "users",
    no_security,
    error_code = 400,
    error_code = 401,
    error_code = 409,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 429,
    error_code = 503
)]
pub async fn register(
    state: Data<AppState>,
    request: HttpRequest,
    caller: MaybeCaller,
    key: IdempotencyKeyHeader,
    body: JsonBody<RegisterUserRequest>,
) -> Result<Replayable<UserView>, ApiError> {
    let JsonBody(dto, raw) = body;
    let new_user = dto.into_domain(Principal::held_token_policy(caller.0.as_ref()))?;
    state.limits.per_address(caller.0.as_ref(), &request, "register").await?;
    let scope = caller.0.as_ref().map(Principal::name);
    let idempotency = state.idempotent_write(key, scope, &request, &raw, Box::new(registered_answer));
    Ok(match state.service.register(new_user, caller.registration_provenance(), idempotency).await? {
        Idempotent::Executed(created) => Replayable::fresh(registered_answer(&created)),
        Idempotent::Replayed(stored) => Replayable::replayed(stored),
    })
}

/// The answer to a registration (also what an idempotency record stores).
fn registered_answer(created: &CreatedUser) -> StoredResponse {
    let profile = &created.profile;
    let message = if created.token_left_with_its_owner {
        "user registered without its push_token, which another user holds"
    } else {
        "user registered"
    };
    StoredResponse {
        status: 201,
        body: success_bytes(UserView::from(profile), message),
        location: Some(format!("/api/v1/users/{}", profile.user.id)),
        // Set by the use case.
        invalidates: Vec::new(),
    }
}

/// Get a user
///
/// The user with preferences, `push_token` (the most recently seen active device's),
/// `push_tokens` and `devices` (the active devices only, most recently seen first; see
/// `GET /api/v1/users/{id}/devices` for all). The id must be spelled canonically, and the
/// route takes no query string (400), so that a client caching this answer by URL holds one
/// copy per user. Scope `users.read`.
#[api_operation(
    tag = "users",
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
    _no_query: NoQuery,
) -> Result<OkEncoded<UserView>, ApiError> {
    user(&state, caller.user(id.0, Scope::UsersRead)?).await
}

/// Loads one user's view, from the cache when warm; shared by the v1 and legacy routes.
pub(crate) async fn user(state: &AppState, id: UserId) -> Result<OkEncoded<UserView>, ApiError> {
    let encoded = state.service.encoded_profile(id).await?;
    Ok(OkEncoded::new(encoded, "user retrieved"))
}

/// Change contact details
///
/// `name`, `email` and `phone` are each optional; `"phone": null` removes the phone number.
/// A taken email is 409. Scope `users.write`.
#[api_operation(
    tag = "users",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 409,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn update_contact(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    body: JsonBody<UpdateContactRequest>,
) -> Result<Ok<UserView>, ApiError> {
    let user = caller.user(id.0, Scope::UsersWrite)?;
    let update = body.0.into_domain()?;
    let profile = state.service.update_contact(user, update, caller.provenance()).await?;
    Ok(Ok::new(UserView::from(&profile), "user updated"))
}

/// Erase a user
///
/// Deletes the user with its preferences and devices. Scope `users.delete`.
#[api_operation(
    tag = "users",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn delete(state: Data<AppState>, caller: Caller, id: UserIdPath) -> Result<NoContent, ApiError> {
    let user = caller.user(id.0, Scope::UsersDelete)?;
    state.service.delete(user).await?;
    Ok(NoContent)
}

/// Change the password
///
/// Only the user itself, with its access token and current password; no service scope
/// grants it. Every access token issued before stops working; the answer carries a fresh one.
/// Each access token may try `LOGIN_MAX_FAILURES` current passwords in its lifetime (then 429
/// with `Retry-After`), counted before any hashing: a stolen token is no oracle, and its thief
/// cannot touch the owner's login budgets.
#[api_operation(
    tag = "users",
    skip_args = "request",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 429,
    error_code = 503
)]
pub async fn change_password(
    state: Data<AppState>,
    request: HttpRequest,
    caller: UserCaller,
    id: UserIdPath,
    body: JsonBody<ChangePasswordRequest>,
) -> Result<Ok<TokenView>, ApiError> {
    let user = caller.owner(id.0)?;
    let (current, new) = body.0.into_domain()?;
    state.limits.admit_current_password_guess(&request).await?;
    let token_version = state.service.change_password(user, current, new).await?;
    let authenticated = domain::auth::Authenticated { user_id: user, token_version };
    Ok(Ok::new(TokenView::issue(&state, authenticated), "password changed"))
}

/// List users
///
/// Users in registration order, `limit` (1–100, default 20) per page, with pagination
/// `meta`. Also at `/api/v1/users/`. Service callers with scope `users.list` only.
#[api_operation(
    tag = "users",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 422,
    error_code = 503
)]
pub async fn list(
    state: Data<AppState>,
    caller: ServiceCaller,
    query: Query<PageQuery>,
) -> Result<Ok<Vec<UserView>>, ApiError> {
    caller.authorize(Scope::UsersList)?;
    let query = query.into_inner();
    let page = PageRequest::new(query.page.unwrap_or(1), query.limit.unwrap_or(20)).map_err(
        |(field, error): (&'static str, InvalidValue)| ApiError::validation(vec![FieldError::new(field, error)]),
    )?;
    let result = state.service.list(page).await?;
    let meta = PageMeta::new(result.total, page.page(), page.limit());
    Ok(Ok::page(result.items.iter().map(UserView::from).collect(), "users retrieved", meta))
}
