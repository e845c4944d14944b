//! `/api/v1/users/{id}/devices`: register (upsert by token), list, activate, deactivate
//! and remove push devices.

use actix_web::web::{Data, Path};
use apistos::api_operation;
use domain::ServiceError;
use domain::device::DeviceSelector;
use domain::user::UserId;
use uuid::Uuid;

use crate::dto::{DeviceView, RegisterDeviceRequest};
use crate::envelope::{Created, CreatedOrOk, NoContent, Ok};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::startup::AppState;

/// Register or refresh a device
///
/// An upsert by token: a new token is 201 with `Location`; a known token (this user's or
/// another user's, e.g. after a different user logged in on the device) is 200, moved to
/// this user with `platform` and `active` updated and `last_seen_at` set to now. Never a
/// duplicate.
#[api_operation(
    tag = "devices",
    error_code = 400,
    error_code = 404,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn register(
    state: Data<AppState>,
    id: Path<Uuid>,
    body: JsonBody<RegisterDeviceRequest>,
) -> Result<CreatedOrOk<DeviceView>, ApiError> {
    let registration = body.0.into_domain()?;
    let user = UserId::from(id.into_inner());
    let registered = state.service.register_device(user, registration).await?;
    let view = DeviceView::from(&registered.device);
    Ok(if registered.created {
        let location = format!("/api/v1/users/{user}/devices/{}", registered.device.id);
        CreatedOrOk::Created(Created::new(view, "device registered", location))
    } else {
        CreatedOrOk::Ok(Ok::new(view, "device updated"))
    })
}

/// List devices
///
/// Active devices first, most recently seen first.
#[api_operation(tag = "devices", error_code = 400, error_code = 404, error_code = 503)]
pub async fn list(state: Data<AppState>, id: Path<Uuid>) -> Result<Ok<Vec<DeviceView>>, ApiError> {
    let devices = state.service.devices(UserId::from(id.into_inner())).await?;
    Ok(Ok::new(devices.iter().map(DeviceView::from).collect(), "devices retrieved"))
}

/// Reads the `{device}` segment: a device id or a token (percent-encoded or raw).
fn selector(device: &str) -> Result<DeviceSelector, ApiError> {
    DeviceSelector::parse(device).ok_or_else(|| ApiError::from(ServiceError::DeviceNotFound))
}

/// Sets the state of a device; shared by the v1 and legacy routes.
pub(crate) async fn set_active(
    state: &AppState,
    user: Uuid,
    device: &str,
    active: bool,
) -> Result<Ok<DeviceView>, ApiError> {
    let selector = selector(device)?;
    let device = state.service.set_device_active(UserId::from(user), &selector, active).await?;
    Ok(Ok::new(DeviceView::from(&device), if active { "device activated" } else { "device deactivated" }))
}

/// Activate a device
///
/// `{device}` is the device id or its token (percent-encoded or raw, slashes included).
/// Idempotent: 200 with the device also when it is already active.
#[api_operation(tag = "devices", error_code = 400, error_code = 404, error_code = 503)]
pub async fn activate(state: Data<AppState>, path: Path<(Uuid, String)>) -> Result<Ok<DeviceView>, ApiError> {
    let (user, device) = path.into_inner();
    set_active(&state, user, &device, true).await
}

/// Deactivate a device
///
/// `{device}` is the device id or its token (percent-encoded or raw, slashes included), as
/// the push sender reports dead tokens. Idempotent: 200 with the device also when it is
/// already inactive.
#[api_operation(tag = "devices", error_code = 400, error_code = 404, error_code = 503)]
pub async fn deactivate(state: Data<AppState>, path: Path<(Uuid, String)>) -> Result<Ok<DeviceView>, ApiError> {
    let (user, device) = path.into_inner();
    set_active(&state, user, &device, false).await
}

/// Remove a device
///
/// `{device}` is the device id or its token.
#[api_operation(tag = "devices", error_code = 400, error_code = 404, error_code = 503)]
pub async fn delete(state: Data<AppState>, path: Path<(Uuid, String)>) -> Result<NoContent, ApiError> {
    let (user, device) = path.into_inner();
    state.service.delete_device(UserId::from(user), &selector(&device)?).await?;
    Ok(NoContent)
}
