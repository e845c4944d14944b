//! `/api/v1/users/{id}/devices`: register (upsert by token), list, activate, deactivate
//! and remove push devices.

use actix_web::HttpRequest;
use actix_web::web::{Data, Path, Query};
use apistos::api_operation;
use domain::DeviceError;
use domain::auth::Scope;
use domain::device::{DeviceSelector, RegisteredDevice};
use domain::idempotency::{Idempotent, StoredResponse};
use domain::user::UserId;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::auth::Caller;
use crate::dto::{DeviceListQuery, DeviceView, RegisterDeviceRequest};
use crate::envelope::{NoContent, Ok, success_bytes};
use crate::error::ApiError;
use crate::extract::{JsonBody, UserIdPath};
use crate::idempotency::{IdempotencyKeyHeader, Replayable};
use crate::state::AppState;
use apistos::ApiComponent;

/// Register or refresh a device
///
/// An upsert by token: a new token is 201 with `Location`; a known token (this user's or
/// another user's, e.g. after a different user logged in on the device) is 200, moved to
/// this user with `platform` and `active` updated and `last_seen_at` set to now. Never a
/// duplicate. Scope `devices.write`.
#[api_operation(
    tag = "devices",
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
pub async fn register(
    state: Data<AppState>,
    request: HttpRequest,
    caller: Caller,
    id: UserIdPath,
    key: IdempotencyKeyHeader,
    body: JsonBody<RegisterDeviceRequest>,
) -> Result<Replayable<DeviceView>, ApiError> {
    let user = caller.user(id.0, Scope::DevicesWrite)?;
    let JsonBody(dto, raw) = body;
    let registration = dto.into_domain()?;
    let scope = Some(caller.0.name());
    let idempotency = state.idempotent_write(key, scope, &request, &raw, Box::new(registered_answer));
    Ok(match state.service.register_device(user, registration, caller.provenance(), idempotency).await? {
        Idempotent::Executed(registered) => Replayable::fresh(registered_answer(&registered)),
        Idempotent::Replayed(stored) => Replayable::replayed(stored),
    })
}

/// The answer to a device registration: 201 with `Location` for a new token, else 200.
fn registered_answer(registered: &RegisteredDevice) -> StoredResponse {
    let device = &registered.device;
    let view = DeviceView::from(device);
    if registered.created {
        StoredResponse {
            status: 201,
            body: success_bytes(view, "device registered"),
            location: Some(format!("/api/v1/users/{}/devices/{}", device.user_id, device.id)),
            // Set by the use case.
            invalidates: Vec::new(),
        }
    } else {
        StoredResponse {
            status: 200,
            body: success_bytes(view, "device updated"),
            location: None,
            invalidates: Vec::new(),
        }
    }
}

/// List devices
///
/// Every device with its state, active devices first, most recently seen first; `?active=true`
/// or `?active=false` keeps one state only. (The user representation shows the active
/// devices only.) Scope `users.read`.
#[api_operation(
    tag = "devices",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn list(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    query: Query<DeviceListQuery>,
) -> Result<Ok<Vec<DeviceView>>, ApiError> {
    let devices = state.service.devices(caller.user(id.0, Scope::UsersRead)?).await?;
    let wanted = query.into_inner().active;
    let views = devices.iter().filter(|device| wanted.is_none_or(|active| device.active == active));
    Ok(Ok::new(views.map(DeviceView::from).collect(), "devices retrieved"))
}

/// The `{device}` segment of a device route: a device id or a token.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
pub struct DeviceSegment {
    /// The device id, or its token (percent-encoded or raw, slashes included).
    pub device: String,
}

/// Reads the `{device}` segment: a device id or a token (percent-encoded or raw).
fn selector(device: &str) -> Result<DeviceSelector, ApiError> {
    DeviceSelector::parse(device).ok_or_else(|| ApiError::from(DeviceError::DeviceNotFound))
}

/// Sets the state of a device; shared by the v1 and legacy routes.
pub(crate) async fn set_active(
    state: &AppState,
    caller: &Caller,
    user: UserId,
    device: &str,
    active: bool,
) -> Result<Ok<DeviceView>, ApiError> {
    let selector = selector(device)?;
    let device = state.service.set_device_active(user, &selector, active, caller.provenance()).await?;
    Ok(Ok::new(DeviceView::from(&device), if active { "device activated" } else { "device deactivated" }))
}

/// Activate a device
///
/// `{device}` is the device id or its token (percent-encoded or raw, slashes included).
/// Idempotent: 200 with the device also when it is already active. Scope `devices.write`.
#[api_operation(
    tag = "devices",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn activate(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    path: Path<DeviceSegment>,
) -> Result<Ok<DeviceView>, ApiError> {
    set_active(&state, &caller, caller.user(id.0, Scope::DevicesWrite)?, &path.device, true).await
}

/// Deactivate a device
///
/// `{device}` is the device id or its token (percent-encoded or raw, slashes included), as
/// the push sender reports dead tokens. Idempotent: 200 with the device also when it is
/// already inactive. Scope `devices.deactivate`.
#[api_operation(
    tag = "devices",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn deactivate(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    path: Path<DeviceSegment>,
) -> Result<Ok<DeviceView>, ApiError> {
    set_active(&state, &caller, caller.user(id.0, Scope::DevicesDeactivate)?, &path.device, false).await
}

/// Remove a device
///
/// `{device}` is the device id or its token. Scope `devices.write`.
#[api_operation(
    tag = "devices",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 503
)]
pub async fn delete(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    path: Path<DeviceSegment>,
) -> Result<NoContent, ApiError> {
    let (user, selector) = (caller.user(id.0, Scope::DevicesWrite)?, selector(&path.device)?);
    state.service.delete_device(user, &selector, caller.provenance()).await?;
    Ok(NoContent)
}
