//! The request context middleware: request ids, one access-log line per request (naming the
//! caller, never its credential), a throttled warning with a hint for every refused
//! credential, the envelope on every error response, including those the framework
//! produces itself, and the refusal of compressed request bodies; and the middleware that
//! keeps small answers uncompressed.

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, AcceptEncoding, Encoding, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web::Data;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};
use tracing::Instrument;

use crate::abuse::limited_address;
use crate::auth::ResolvedCaller;
use crate::auth::client_address::client_address;
use crate::error::{ApiError, AuthFailure};
use crate::state::AppState;

/// The header carrying the request id, in and out.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id (`X-Request-Id`: the caller's, or one assigned here), for what a
/// handler records (the consent history names the request of each change). Shared, not
/// copied: every request has one and most never write it anywhere.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    /// The id as the consent history records it.
    pub fn to_text(&self) -> String {
        self.0.to_string()
    }
}

/// A caller's request id is kept when it is short, printable ASCII (it ends up in logs).
fn caller_request_id(request: &ServiceRequest) -> Option<Arc<str>> {
    let value = request.headers().get(&REQUEST_ID)?.to_str().ok()?;
    let valid = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    valid.then(|| value.into())
}

/// A new request id: a random UUID, written without an intermediate `String`.
fn new_request_id() -> Arc<str> {
    let mut text = uuid::Uuid::encode_buffer();
    (*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text)).into()
}

/// Whether a response already carries a JSON body (ours always do).
fn has_json_body(response: &ServiceResponse<BoxBody>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"))
}

/// The smallest answer worth compressing (`COMPRESS_MIN_BYTES`), for
/// [`small_answers_uncompressed`].
#[derive(Debug, Clone, Copy)]
pub struct CompressMinBytes(pub usize);

/// The `Content-Encoding` that actix's `Compress` leaves alone: set on a small answer inside
/// it, and taken off again by [`request_context`] outside it, so that no caller sees it.
const LEAVE_UNCOMPRESSED: &str = "identity";

/// Runs inside `Compress`: marks an answer of known size under `COMPRESS_MIN_BYTES` so that
/// it goes out as it is, even to a caller that accepts compression (the gateway's axios and
/// the push sender's httpx offer it on every call). Compression is paid in CPU and saves only
/// bytes: brotli on a 1.2 KB profile cost the server six times the whole uncompressed answer
/// (README, "Running behind the seed system's gateway"). actix also hands every chunk of
/// 1 KiB or more to a blocking thread and streams the result in pieces, where a whole answer
/// goes out in one write.
pub async fn small_answers_uncompressed<B: MessageBody>(
    request: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let min_bytes = request.app_data::<CompressMinBytes>().map_or(0, |min| min.0);
    let mut response = next.call(request).await?;
    let small = matches!(response.response().body().size(), BodySize::Sized(size) if size < min_bytes as u64);
    if small && !response.headers().contains_key(header::CONTENT_ENCODING) && accepts_identity(response.request()) {
        response.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static(LEAVE_UNCOMPRESSED));
    }
    Ok(response)
}

/// Whether the caller takes an answer without a content coding: unless it refuses one
/// (`identity;q=0`, or `*;q=0` without naming identity; RFC 9110, 12.5.3). Only a zero weight
/// can refuse it, so most callers' headers are decided without being parsed.
fn accepts_identity(request: &HttpRequest) -> bool {
    let weighs_zero = |value: &HeaderValue| value.as_bytes().windows(3).any(|part| part.eq_ignore_ascii_case(b"q=0"));
    !request.headers().get_all(header::ACCEPT_ENCODING).any(weighs_zero)
        || request
            .get_header::<AcceptEncoding>()
            .is_none_or(|accepted| accepted.negotiate([Encoding::identity()].iter()).is_some())
}

/// Whether `request` names a content coding for its body (anything but `identity`). actix
/// would expand such a body in memory before it checks the result against `MAX_BODY_BYTES`:
/// a few kilobytes of brotli expand to gigabytes, and killed the process. Whatever the
/// request declares of its body: with `Upgrade`, actix reads a body until the connection
/// closes, with no length or chunks to declare it.
fn declares_compressed_body(request: &ServiceRequest) -> bool {
    let coded = |value: &HeaderValue| {
        value.to_str().map_or(true, |codings| {
            codings
                .split(',')
                .map(str::trim)
                .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        })
    };
    request.headers().get_all(header::CONTENT_ENCODING).any(coded)
}

/// Wraps every request: assigns the request id, logs the outcome, and replaces a
/// framework error body (plain text or empty) with the envelope.
pub async fn request_context(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    // Counted until its response is produced: a stop waits for it (and its writes).
    let in_flight = request.app_data::<Data<AppState>>().map(|state| state.in_flight.token());
    let request_id = caller_request_id(&request).unwrap_or_else(new_request_id);
    let method = request.method().clone();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method);
    request.extensions_mut().insert(RequestId(Arc::clone(&request_id)));
    let started = Instant::now();

    // Handlers and extractors turn their errors into responses; only a failing middleware
    // could return `Err` here, and actix answers that itself. A compressed body is refused
    // before anything reads it, for every route (the 415 names the one coding accepted), and
    // the connection closes: the body stays unread.
    let mut response = if declares_compressed_body(&request) {
        let mut refusal = ApiError::compressed_body().error_response();
        refusal.headers_mut().insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        refusal.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        request.into_response(refusal)
    } else {
        next.call(request).instrument(span.clone()).await?.map_into_boxed_body()
    };

    if response.headers().get(header::CONTENT_ENCODING).is_some_and(|value| value == LEAVE_UNCOMPRESSED) {
        response.headers_mut().remove(header::CONTENT_ENCODING);
    }
    let status = response.status();
    if (status.is_client_error() || status.is_server_error()) && !has_json_body(&response) {
        let allow = response.headers().get(header::ALLOW).cloned();
        let mut replacement: HttpResponse = ApiError::from_status(status).error_response();
        if let Some(allow) = allow {
            replacement.headers_mut().insert(header::ALLOW, allow);
        }
        response = response.into_response(replacement);
    }
    // While the instance drains for a stop, keep-alive clients are told to go elsewhere,
    // so that the drain ends with the requests already running.
    let draining = in_flight.as_ref().is_some_and(|token| token.task_tracker().is_closed());
    if draining || crate::extract::declares_unread_body(response.request()) {
        response.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }

    let route = crate::extract::route_template(response.request()).unwrap_or("unmatched");
    let elapsed = started.elapsed();
    let caller = response.request().extensions().get::<ResolvedCaller>().cloned();
    let caller = caller.as_ref().map_or(&"-" as &dyn std::fmt::Display, |caller| &caller.0);
    let auth_failure = response.response().extensions().get::<AuthFailure>().cloned();
    if let Some(state) = response.request().app_data::<Data<AppState>>() {
        state.metrics.observe_request(route, &method, status.as_u16(), elapsed);
        if let Some(failure) = auth_failure {
            let address = client_address(response.request(), &state.limits.trusted_proxies);
            // Throttled per /64 for IPv6, as the limits count: one subscriber, one warning.
            let address = address.map_or_else(|| "unknown".to_owned(), |address| limited_address(address).to_string());
            if state.auth_failure_log.first_in_window(&address, failure.reason).await {
                span.in_scope(|| {
                    tracing::warn!(
                        route = %route,
                        status = status.as_u16(),
                        client = %address,
                        caller = %caller,
                        reason = failure.reason,
                        hint = %failure.hint,
                        "request refused: {} (logged once a minute per client address and reason)",
                        failure.reason
                    );
                });
            }
        }
    }
    let latency_ms = elapsed.as_secs_f64() * 1_000.0;
    span.in_scope(|| {
        tracing::info!(
            route = %route,
            status = status.as_u16(),
            latency_ms,
            caller = %caller,
            "request completed"
        );
    });
    Ok(response)
}
