//! Errors of the HTTP layer and their one mapping to status codes and envelopes.
//!
//! Handlers return [`ApiError`]; domain errors convert into it in one exhaustive `match`
//! ([`From<ServiceError>`]). 5xx bodies say nothing internal: the cause is logged once,
//! with its chain, where the error is turned into a response.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use apistos::paths::{MediaType, Response};
use apistos::reference_or::ReferenceOr;
use apistos::{ApiComponent, ApiErrorComponent, Schema};
use domain::idempotency::IdempotencyConflict;
use domain::{FieldError, ServiceError};
use schemars::JsonSchema;
use serde::Serialize;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: u64 = 1;

/// One invalid field, as returned in `details`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FieldDetail {
    /// The field's path in the request (`email`, `preferences.timezone`).
    pub field: String,
    /// Why it was rejected.
    pub message: String,
}

/// The schema of `details`, with [`FieldDetail`] written out in place: error schemas are
/// registered without their children, and a reference to a schema that is not in the
/// document would leave every error response unresolvable.
fn inline_field_details(generator: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
    schemars::schema::SchemaObject {
        instance_type: Some(schemars::schema::InstanceType::Array.into()),
        array: Some(Box::new(schemars::schema::ArrayValidation {
            items: Some(FieldDetail::json_schema(generator).into()),
            ..Default::default()
        })),
        ..Default::default()
    }
    .into()
}

/// The body of every error response.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct ErrorEnvelope {
    /// Always false.
    pub success: bool,
    /// Always null.
    pub data: Option<()>,
    /// A machine-readable code: `invalid_json`, `invalid_id`, `validation_error`,
    /// `user_not_found`, `device_not_found`, `not_found`, `method_not_allowed`,
    /// `email_taken`, `idempotency_in_flight`, `idempotency_key_reused`,
    /// `authentication_required`, `invalid_credentials`, `forbidden`,
    /// `invalid_current_password`, `rate_limited`,
    /// `payload_too_large`, `unsupported_media_type`,
    /// `service_unavailable`, `change_not_confirmed` (503: the change is saved, retry the
    /// same request, with the same `Idempotency-Key` for a `POST`, to have it confirmed),
    /// `internal_error`.
    pub error: Cow<'static, str>,
    /// A human-readable explanation.
    pub message: Cow<'static, str>,
    /// Always null.
    pub meta: Option<()>,
    /// The invalid fields, on `validation_error` only (absent otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "inline_field_details")]
    pub details: Vec<FieldDetail>,
}

/// Why a request was refused with 401 or 403, for the operator: carried on the response to
/// the request log (see `middleware`), which warns about it with the hint. Callers see only
/// the envelope's message; a hint never holds a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthFailure {
    /// A short machine-readable reason (`missing_credential`, `unknown_service_key`, ...).
    pub reason: &'static str,
    /// What was missing or wrong, and what the operator can set.
    pub hint: Cow<'static, str>,
}

/// An error answer: status, code, message and optional field details.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    details: Vec<FieldDetail>,
    /// The cause of a 5xx, logged when the response is built.
    cause: Option<domain::error::BoxError>,
    /// Seconds to wait before retrying (429, 503).
    retry_after: Option<u64>,
    /// Why authentication or authorization failed (401, 403), for the log (boxed: most
    /// errors have none, and `ApiError` stays small).
    auth_failure: Option<Box<AuthFailure>>,
}

/// What every credential-less caller is told to fix, in the operator's log.
const MISSING_CREDENTIAL_HINT: &str = "the request carried neither X-Service-Key nor Authorization: Bearer. \
     Clients that cannot send a credential (the seed's gateway and push sender) need TRUST_INTERNAL_NETWORK=true, \
     which lets them read users and eligibility and deactivate devices; other services send X-Service-Key with a \
     key from SERVICE_API_KEYS";

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            cause: None,
            retry_after: None,
            auth_failure: None,
        }
    }

    /// The same error, with another reason and hint for the operator's log.
    pub fn with_auth_failure(self, reason: &'static str, hint: impl Into<Cow<'static, str>>) -> Self {
        Self { auth_failure: Some(Box::new(AuthFailure { reason, hint: hint.into() })), ..self }
    }

    /// 400: the body is not valid JSON.
    pub fn invalid_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 400: a path id is not a UUID in canonical spelling.
    pub fn invalid_id() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("the id in the path {}", domain::user::CANONICAL_ID_FORM),
        )
    }

    /// 400: the query string is malformed.
    pub fn invalid_query(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    /// 422: fields are well-formed JSON but invalid.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let details = errors
            .into_iter()
            .map(|error| FieldDetail { field: error.field.into_owned(), message: error.message.into_owned() })
            .collect();
        Self { details, ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_error", "invalid request fields") }
    }

    /// 410: a cursor of the events feed names no event (pruned, or never recorded).
    pub fn cursor_expired() -> Self {
        Self::new(
            StatusCode::GONE,
            "cursor_expired",
            "no event has this id (older than the retention, or never recorded): start again without `after`",
        )
    }

    /// 404: no route matches.
    pub fn route_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 408: the body did not arrive in full within `timeout`; the connection is closed.
    pub fn request_timeout(timeout: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the request body did not arrive within {} s", timeout.as_secs()),
        )
    }

    /// 413: the body exceeds the limit.
    pub fn payload_too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
    }

    /// 415: the body is not declared as JSON.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON with Content-Type: application/json",
        )
    }

    /// 415: a request body with a content coding (`Content-Encoding`), refused unread.
    pub fn compressed_body() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must not be compressed: send it without Content-Encoding",
        )
    }

    /// 503: a dependency cannot serve now.
    pub fn unavailable(cause: domain::error::BoxError) -> Self {
        Self {
            cause: Some(cause),
            retry_after: Some(RETRY_AFTER_SECONDS),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "temporarily unavailable, retry later")
        }
    }

    /// 401: no credential on a route that needs one.
    pub fn authentication_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_required",
            "send X-Service-Key or Authorization: Bearer <access token>",
        )
        .with_auth_failure("missing_credential", MISSING_CREDENTIAL_HINT)
    }

    /// 401: a credential that is wrong, expired or revoked. The caller is not told which;
    /// `reason` and `hint` tell the operator.
    pub fn invalid_credential(reason: &'static str, hint: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "the credential is invalid, expired or revoked")
            .with_auth_failure(reason, hint)
    }

    /// 403: authenticated, but not allowed this; the message says what would be needed.
    pub fn forbidden(denied: domain::auth::AccessDenied) -> Self {
        use domain::auth::AccessDenied;
        let (reason, hint): (&'static str, Cow<'static, str>) = match denied {
            AccessDenied::MissingScope(scope) => (
                "missing_scope",
                format!(
                    "add {scope} to the scopes of this caller's key in SERVICE_API_KEYS (name:key:scope,scope;...); \
                     callers without a key (TRUST_INTERNAL_NETWORK) only read users and eligibility and deactivate devices"
                )
                .into(),
            ),
            AccessDenied::NotOwner => {
                ("not_owner", "an end user's access token reached for another user's data".into())
            }
            AccessDenied::ServicesOnly => ("services_only", "an end user called a service-only route".into()),
            AccessDenied::OwnerOnly => {
                ("owner_only", "only the user itself may do this, with its own access token".into())
            }
        };
        Self::new(StatusCode::FORBIDDEN, "forbidden", denied.to_string()).with_auth_failure(reason, hint)
    }

    /// 429: over an abuse limit.
    pub fn too_many_requests(retry_after: std::time::Duration) -> Self {
        Self {
            retry_after: Some(retry_after.as_secs().max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many attempts, retry later")
        }
    }

    /// 500: a bug.
    pub fn internal(cause: domain::error::BoxError) -> Self {
        Self { cause: Some(cause), ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal error") }
    }

    /// An envelope for a status produced outside the handlers (by the framework).
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::route_not_found(),
            StatusCode::METHOD_NOT_ALLOWED => {
                Self::new(status, "method_not_allowed", "this method is not allowed on this route")
            }
            StatusCode::PAYLOAD_TOO_LARGE => Self::payload_too_large(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::unsupported_media_type(),
            status if status.is_server_error() => Self::new(status, "internal_error", "internal error"),
            status => Self::new(status, "bad_request", status.canonical_reason().unwrap_or("bad request")),
        }
    }

    /// The envelope this error answers with.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            success: false,
            data: None,
            error: Cow::Borrowed(self.code),
            message: self.message.clone(),
            meta: None,
            details: self.details.clone(),
        }
    }
}

impl From<domain::login_guard::GuessRefused> for ApiError {
    fn from(refused: domain::login_guard::GuessRefused) -> Self {
        Self::too_many_requests(refused.retry_after)
    }
}

/// Each operation's error maps as the [`ServiceError`] it widens into: one mapping for all.
macro_rules! map_like_service_error {
    ($($operation_error:ty),* $(,)?) => {$(
        impl From<$operation_error> for ApiError {
            fn from(error: $operation_error) -> Self {
                ServiceError::from(error).into()
            }
        }
    )*};
}

map_like_service_error!(
    domain::ReadError,
    domain::EligibilityError,
    domain::CatalogueError,
    domain::ChoiceError,
    domain::RegisterError,
    domain::ContactError,
    domain::ChangeError,
    domain::DeviceError,
    domain::LoginError,
    domain::PasswordChangeError,
);

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::UserNotFound => Self::new(StatusCode::NOT_FOUND, "user_not_found", "user not found"),
            ServiceError::DeviceNotFound => {
                Self::new(StatusCode::NOT_FOUND, "device_not_found", "the user has no such device")
            }
            ServiceError::InvalidCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_credentials", "invalid email or password")
            }
            ServiceError::CurrentPasswordMismatch => {
                Self::new(StatusCode::FORBIDDEN, "invalid_current_password", "the current password is incorrect")
            }
            ServiceError::EmailTaken => {
                Self::new(StatusCode::CONFLICT, "email_taken", "a user with this email address already exists")
            }
            ServiceError::CategoryNotFound => {
                Self::new(StatusCode::NOT_FOUND, "category_not_found", "no notification category has this key")
            }
            ServiceError::CategoryExists => {
                Self::new(StatusCode::CONFLICT, "category_exists", "a category with this key already exists")
            }
            ServiceError::CategoryInUse(users) => Self::new(
                StatusCode::CONFLICT,
                "category_in_use",
                format!(
                    "{users} user(s) have choices in this category; DELETE with ?force=true drops them (each drop is \
                     recorded in the user's consent history)"
                ),
            ),
            ServiceError::NotYetRegistered => Self::new(
                StatusCode::NOT_FOUND,
                "not_yet_registered",
                "the user was not registered yet at that instant, so nothing was recorded for it",
            ),
            ServiceError::Idempotency(IdempotencyConflict::KeyReused) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            ),
            ServiceError::Idempotency(IdempotencyConflict::InFlight) => Self::new(
                StatusCode::CONFLICT,
                "idempotency_in_flight",
                "a request with this Idempotency-Key is still being processed; retry shortly",
            ),
            ServiceError::InvalidationUnconfirmed => Self {
                retry_after: Some(RETRY_AFTER_SECONDS),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "change_not_confirmed",
                    "the change is saved, but neither the cache nor the invalidation ledger confirmed it in time: \
                     retry the same request (with the same Idempotency-Key for a POST) to confirm it",
                )
            },
            ServiceError::SavedButUnread => Self {
                retry_after: Some(RETRY_AFTER_SECONDS),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "change_saved",
                    "the change is saved, but reading the result back failed: read the user, or retry the same \
                     request (it changes nothing the second time)",
                )
            },
            ServiceError::Unavailable(cause) => Self::unavailable(cause),
            ServiceError::Unexpected(cause) => Self::internal(cause),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

pub use domain::error::error_chain;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(cause) = &self.cause {
            let chain = error_chain(cause.as_ref());
            if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
                tracing::error!(status = self.status.as_u16(), error = %chain, "request failed");
            } else {
                tracing::warn!(status = self.status.as_u16(), error = %chain, "dependency unavailable");
            }
        }
        let mut response = HttpResponse::build(self.status).json(self.envelope());
        if let Some(failure) = &self.auth_failure {
            response.extensions_mut().insert(AuthFailure::clone(failure));
        }
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a trickled body may still be on its way: nothing more is read.
            response.head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The error statuses any operation may answer, each with the `ErrorEnvelope` body.
/// Operations narrow the list with `error_code = ...` in `#[api_operation]`.
const DOCUMENTED_ERRORS: [(u16, &str); 12] = [
    (
        400,
        "Malformed JSON (`invalid_json`), a path id not in canonical spelling (`invalid_id`: lower-case, hyphenated), or a malformed or unexpected query string (`invalid_query`)",
    ),
    (401, "No credential (`authentication_required`), or a wrong, expired or revoked one (`invalid_credentials`)"),
    (
        403,
        "Authenticated, but not allowed (`forbidden`; the message names what is missing, e.g. a service key's scope), or a wrong current password (`invalid_current_password`)",
    ),
    (404, "Unknown user (`user_not_found`) or device (`device_not_found`)"),
    (
        409,
        "The email address belongs to another user (`email_taken`), or a request with the same `Idempotency-Key` is still running (`idempotency_in_flight`)",
    ),
    (
        408,
        "The body did not arrive in full within `REQUEST_BODY_TIMEOUT` (`request_timeout`); the connection is closed",
    ),
    (413, "The body exceeds the size limit (`payload_too_large`)"),
    (415, "The body is not `application/json` (`unsupported_media_type`)"),
    (
        422,
        "Well-formed but invalid fields (`validation_error`, with `details`), or an `Idempotency-Key` reused with another body (`idempotency_key_reused`)",
    ),
    (429, "Over an abuse limit (`rate_limited`); see `Retry-After`"),
    (500, "A bug (`internal_error`); the body says nothing internal"),
    (
        503,
        "A dependency is down or saturated (`service_unavailable`), or a change was saved but neither the cache nor the store could confirm that no reader will be served the value it replaced (`change_not_confirmed`: retry the same request, with the same `Idempotency-Key` for a `POST`, to confirm it); see `Retry-After`",
    ),
];

impl ApiErrorComponent for ApiError {
    fn schemas_by_status_code() -> BTreeMap<String, (String, ReferenceOr<Schema>)> {
        let Some(schema) = <ErrorEnvelope as ApiComponent>::schema() else {
            return BTreeMap::new();
        };
        DOCUMENTED_ERRORS.iter().map(|(status, _)| (status.to_string(), schema.clone())).collect()
    }

    fn error_responses() -> Vec<(String, Response)> {
        let name = <ErrorEnvelope as JsonSchema>::schema_name();
        DOCUMENTED_ERRORS
            .iter()
            .map(|(status, description)| {
                let content = BTreeMap::from([(
                    "application/json".to_owned(),
                    MediaType {
                        schema: Some(ReferenceOr::Reference { _ref: format!("#/components/schemas/{name}") }),
                        ..Default::default()
                    },
                )]);
                (status.to_string(), Response { description: (*description).to_owned(), content, ..Default::default() })
            })
            .collect()
    }
}
