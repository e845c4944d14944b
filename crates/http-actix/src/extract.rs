//! Request extractors that answer every failure with the envelope: JSON bodies (415, 413,
//! 400 for syntax, 422 with the field path for well-formed but wrong fields), user ids in
//! paths (400 `invalid_id` for anything but the canonical spelling, as sent on the wire) and
//! query strings on routes that take none (400 `invalid_query`).

use std::collections::HashSet;
use std::sync::{LazyLock, PoisonError, RwLock};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError};
use apistos::ApiComponent;
use apistos::Schema;
use apistos::paths::{Parameter, ParameterDefinition, ParameterIn};
use apistos::reference_or::ReferenceOr;
use domain::user::UserId;
use domain::{FieldError, InvalidValue};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body deserialized strictly (unknown fields are refused by the DTOs), with
/// its raw bytes (for idempotency fingerprints).
#[derive(Debug)]
pub struct JsonBody<T>(pub T, pub Bytes);

/// Whether the request declares a JSON body (`application/json` or `application/*+json`).
fn is_json(request: &HttpRequest) -> bool {
    match request.mime_type() {
        Ok(Some(mime)) => {
            mime.type_() == "application" && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        }
        _ => false,
    }
}

/// Drops serde_json's " at line L column C" suffix: the field path says where.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// Deserializes `body`, classifying failures as the contract wants: a body that is not
/// one well-formed JSON value is 400, a well-formed one with wrong fields is 422.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => {
            deserializer.end().map_err(|error| ApiError::invalid_json(format!("malformed JSON: {error}")))?;
            Ok(value)
        }
        Err(error) => {
            // A field error may stop deserialization before a syntax error further on:
            // only a body that is well-formed throughout is "well-formed but invalid".
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                return Err(ApiError::invalid_json(format!("malformed JSON: {syntax}")));
            }
            let path = error.path().to_string();
            let field = if path == "." { "body".to_owned() } else { path };
            let message = without_position(&error.into_inner().to_string());
            Err(ApiError::validation(vec![FieldError::new(field, InvalidValue::owned(message))]))
        }
    }
}

/// How long a request body may take to arrive in full (`REQUEST_BODY_TIMEOUT`): a body
/// trickled a byte at a time must not hold a connection and a worker's attention for ever.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub std::time::Duration);

/// Marks a request whose body was read in full (see [`declares_unread_body`]).
#[derive(Debug, Clone, Copy)]
struct BodyRead;

/// Whether `request` declares a body (a length above zero, or chunked) that no extractor read:
/// its answer must close the connection, or actix would drain the rest of a trickled body for
/// as long as the client keeps sending it.
pub fn declares_unread_body(request: &HttpRequest) -> bool {
    let headers = request.headers();
    let declared = headers.contains_key(actix_web::http::header::TRANSFER_ENCODING)
        || headers
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0);
    declared && request.extensions().get::<BodyRead>().is_none()
}

/// The body timeout when the app configures none.
const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The declarative (garde) rules of a body that has passed deserialization, as the same
/// `details` list the domain's parse errors give.
fn validated<T: garde::Validate<Context = ()>>(value: T) -> Result<T, ApiError> {
    match value.validate() {
        Ok(()) => Ok(value),
        Err(report) => Err(ApiError::validation(
            report
                .iter()
                .map(|(path, error)| FieldError::new(path.to_string(), InvalidValue::owned(error.message().to_owned())))
                .collect(),
        )),
    }
}

impl<T: DeserializeOwned + garde::Validate<Context = ()> + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let declared_json = is_json(request);
        let timeout = request.app_data::<BodyTimeout>().map_or(DEFAULT_BODY_TIMEOUT, |timeout| timeout.0);
        // The payload limit comes from the app's `PayloadConfig`.
        let body = Bytes::from_request(request, payload);
        let request = request.clone();
        Box::pin(async move {
            if !declared_json {
                return Err(ApiError::unsupported_media_type());
            }
            let body = tokio::time::timeout(timeout, body).await.map_err(|_| ApiError::request_timeout(timeout))?;
            if body.is_ok() {
                request.extensions_mut().insert(BodyRead);
            }
            let body = body.map_err(|error| match error.as_response_error().status_code() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(),
                _ => ApiError::invalid_json("the request body could not be read"),
            })?;
            parse_json(&body).and_then(validated).map(|value| JsonBody(value, body))
        })
    }
}

impl<T: ApiComponent> ApiComponent for JsonBody<T> {
    fn child_schemas() -> Vec<(String, ReferenceOr<Schema>)> {
        T::child_schemas()
    }

    fn raw_schema() -> Option<ReferenceOr<Schema>> {
        T::raw_schema()
    }

    fn schema() -> Option<(String, ReferenceOr<Schema>)> {
        T::schema()
    }
}

/// The user id of a route's `{id}` (or legacy `{user_id}`) segment.
///
/// Read from the path as the client sent it, before any percent-decoding, and accepted only
/// in canonical spelling (`UserId::parse`): a client that caches our answers under the id as
/// it spelled it (the seed's gateway keys `usercache:{id}` by its own spelling) must not be
/// able to hold a copy under a key our invalidations never delete, and `%30…` decodes to the
/// same id as `0…`.
#[derive(Debug, Clone, Copy)]
pub struct UserIdPath(pub UserId);

/// The template of the route that matched the request (`/api/v1/users/{id}`), if one did:
/// found once per request (actix walks its resource map and builds a string for it) and
/// shared by the extractors and the metrics. Templates are interned: there are as many as
/// routes, however many requests come.
pub(crate) fn route_template(request: &HttpRequest) -> Option<&'static str> {
    #[derive(Clone, Copy)]
    struct Matched(Option<&'static str>);
    static TEMPLATES: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(RwLock::default);

    if let Some(&Matched(template)) = request.extensions().get::<Matched>() {
        return template;
    }
    let template = request.match_pattern().map(|pattern| {
        let known = TEMPLATES.read().unwrap_or_else(PoisonError::into_inner).get(pattern.as_str()).copied();
        known.unwrap_or_else(|| {
            let mut templates = TEMPLATES.write().unwrap_or_else(PoisonError::into_inner);
            match templates.get(pattern.as_str()) {
                Some(&known) => known,
                None => {
                    let template: &'static str = Box::leak(pattern.into_boxed_str());
                    templates.insert(template);
                    template
                }
            }
        })
    });
    request.extensions_mut().insert(Matched(template));
    template
}

/// The names a route may give its user id segment.
const USER_ID_SEGMENTS: [&str; 2] = ["{id}", "{user_id}"];

/// The raw (not percent-decoded) path segment that the route's pattern names `{id}` or
/// `{user_id}`. User ids come before any tail segment that may hold slashes (`{device:.+}`),
/// so segments of the pattern and of the path line up up to it.
fn raw_user_id_segment(request: &HttpRequest) -> Option<&str> {
    let pattern = route_template(request)?;
    let index = pattern.split('/').position(|segment| USER_ID_SEGMENTS.contains(&segment))?;
    request.uri().path().split('/').nth(index)
}

impl FromRequest for UserIdPath {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let id = raw_user_id_segment(request).and_then(|raw| UserId::parse(raw).ok());
        std::future::ready(id.map(Self).ok_or_else(ApiError::invalid_id))
    }
}

/// The JSON schema of a canonical id (also used for ids in bodies).
pub fn canonical_id_schema() -> schemars::schema::Schema {
    schemars::schema::SchemaObject {
        instance_type: Some(schemars::schema::InstanceType::String.into()),
        format: Some("uuid".to_owned()),
        string: Some(Box::new(schemars::schema::StringValidation {
            pattern: Some(CANONICAL_ID_PATTERN.to_owned()),
            ..Default::default()
        })),
        ..Default::default()
    }
    .into()
}

/// The one spelling of an id: lower-case hexadecimal, hyphenated 8-4-4-4-12.
const CANONICAL_ID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// Documents an extractor that carries no body: no schema, and the parameters (path, query
/// or header) that `$parameters` lists.
macro_rules! parameters_component {
    ($extractor:ty, $parameters:expr) => {
        impl ApiComponent for $extractor {
            fn child_schemas() -> Vec<(String, ReferenceOr<Schema>)> {
                Vec::new()
            }

            fn schema() -> Option<(String, ReferenceOr<Schema>)> {
                None
            }

            fn parameters() -> Vec<Parameter> {
                $parameters
            }
        }
    };
}
pub(crate) use parameters_component;

parameters_component!(
    UserIdPath,
    vec![Parameter {
        // apistos names path parameters after the route's pattern.
        name: String::new(),
        _in: ParameterIn::Path,
        description: Some(
            "The user id, in canonical form only (lower-case, hyphenated); any other spelling is 400 `invalid_id`."
                .to_owned(),
        ),
        required: Some(true),
        definition: Some(ParameterDefinition::Schema(Box::new(ReferenceOr::Object(canonical_id_schema())))),
        ..Default::default()
    }]
);

/// A query string on a route that takes none: refused (400 `invalid_query`) rather than
/// ignored, since a client that keys its cache by URL (`/users/{id}?x`) would otherwise hold a
/// copy of our answer that no invalidation names.
#[derive(Debug, Clone, Copy)]
pub struct NoQuery;

impl FromRequest for NoQuery {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        // A bare `?` counts too: `/users/{id}?` is another cache key for the same answer.
        std::future::ready(if request.uri().query().is_none() {
            Ok(Self)
        } else {
            Err(ApiError::invalid_query("this route takes no query string"))
        })
    }
}

parameters_component!(NoQuery, Vec::new());

/// Turns the error of an actix `Path` extraction into `invalid_id`.
pub fn path_error(_error: actix_web::error::PathError, _request: &HttpRequest) -> actix_web::Error {
    ApiError::invalid_id().into()
}

/// Turns the error of an actix `Query` extraction into `invalid_query`.
pub fn query_error(error: actix_web::error::QueryPayloadError, _request: &HttpRequest) -> actix_web::Error {
    ApiError::invalid_query(format!("invalid query string: {error}")).into()
}

/// Answers a `Json` extractor error (unused by our handlers, installed as a safety net).
pub fn json_error(error: actix_web::error::JsonPayloadError, _request: &HttpRequest) -> actix_web::Error {
    match error.status_code() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large().into(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::unsupported_media_type().into(),
        _ => ApiError::invalid_json("malformed JSON").into(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only deserialized")]
    struct Body {
        name: String,
        nested: Option<Nested>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "fields are only deserialized")]
    struct Nested {
        flag: bool,
    }

    fn status_and_body(result: Result<Body, ApiError>) -> (u16, serde_json::Value) {
        let error = result.unwrap_err();
        (error.status_code().as_u16(), serde_json::to_value(error.envelope()).unwrap())
    }

    #[test]
    fn syntax_errors_are_400_and_field_errors_422_with_their_path() {
        let (status, _) = status_and_body(parse_json(b"{\"name\": "));
        assert_eq!(status, 400);
        let (status, _) = status_and_body(parse_json(b"{\"name\": \"a\"} trailing"));
        assert_eq!(status, 400);
        let (status, body) = status_and_body(parse_json(br#"{"name": "a", "nested": {"flag": "yes"}}"#));
        assert_eq!(status, 422);
        assert_eq!(body["details"][0]["field"], "nested.flag");
        let (status, body) = status_and_body(parse_json(br#"{"name": "a", "id": "x"}"#));
        assert_eq!(status, 422);
        assert!(body["details"][0]["message"].as_str().unwrap().contains("unknown field `id`"));
    }

    #[test]
    fn deeply_nested_json_is_rejected_without_overflowing_the_stack() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let (status, _) = status_and_body(parse_json(deep.as_bytes()));
        assert_eq!(status, 422);
        let deep_field =
            format!(r#"{{"name": "a", "nested": {}true{}}}"#, "{\"flag\":".repeat(10_000), "}".repeat(10_000));
        let (status, _) = status_and_body(parse_json(deep_field.as_bytes()));
        assert_eq!(status, 422);
        let unbalanced = "[".repeat(100_000);
        let (status, _) = status_and_body(parse_json(unbalanced.as_bytes()));
        assert_eq!(status, 400);
    }
}
