//! The request context middleware: request ids, one access-log line per request, and the
//! envelope on every error response, including those the framework produces itself.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::{HttpResponse, ResponseError};
use tracing::Instrument;

use crate::error::ApiError;
use crate::startup::AppState;

/// The header carrying the request id, in and out.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A caller's request id is kept when it is short, printable ASCII (it ends up in logs).
fn caller_request_id(request: &ServiceRequest) -> Option<String> {
    let value = request.headers().get(&REQUEST_ID)?.to_str().ok()?;
    let valid = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    valid.then(|| value.to_owned())
}

/// Whether a response already carries a JSON body (ours always do).
fn has_json_body(response: &ServiceResponse<BoxBody>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}

/// Wraps every request: assigns the request id, logs the outcome, and replaces a
/// framework error body (plain text or empty) with the envelope.
pub async fn request_context(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let request_id = caller_request_id(&request).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = request.method().clone();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method);
    let started = Instant::now();

    // Handlers and extractors turn their errors into responses; only a failing middleware
    // could return `Err` here, and actix answers that itself.
    let mut response = next.call(request).instrument(span.clone()).await?.map_into_boxed_body();

    let status = response.status();
    if (status.is_client_error() || status.is_server_error()) && !has_json_body(&response) {
        let allow = response.headers().get(header::ALLOW).cloned();
        let mut replacement: HttpResponse = ApiError::from_status(status).error_response();
        if let Some(allow) = allow {
            replacement.headers_mut().insert(header::ALLOW, allow);
        }
        response = response.into_response(replacement);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }

    let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let elapsed = started.elapsed();
    if let Some(state) = response.request().app_data::<Data<AppState>>() {
        state.metrics.observe_request(&route, method.as_str(), status.as_u16(), elapsed);
    }
    let latency_ms = elapsed.as_secs_f64() * 1_000.0;
    span.in_scope(|| {
        tracing::info!(route = %route, status = status.as_u16(), latency_ms, "request completed");
    });
    Ok(response)
}
