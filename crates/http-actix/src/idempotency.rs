//! `Idempotency-Key` on POST routes: the header extractor, request fingerprints, and the
//! responder that answers fresh executions and replays alike.
//!
//! The record of a request is stored by the repository in the transaction of its change
//! (see `domain::idempotency`); a replay returns the stored status, body and `Location`
//! with `Idempotent-Replayed: true`.

use std::future::{Ready, ready};
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, Responder};
use apistos::ApiComponent;
use apistos::reference_or::ReferenceOr;
use apistos::{Schema, paths::Parameter, paths::ParameterDefinition, paths::ParameterIn};
use domain::idempotency::{IdempotencyKey, IdempotentRequest, IdempotentWrite, RenderResponse, StoredResponse};
use domain::{FieldError, InvalidValue};
use hmac::{Hmac, KeyInit, Mac};
use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::error::ApiError;

/// The request header carrying the key.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The response header marking a replay.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The scope of callers without credentials (public registration).
pub const ANONYMOUS_CALLER: &str = "anonymous";

/// The optional `Idempotency-Key` header, validated (1–255 printable ASCII, else 422).
#[derive(Debug)]
pub struct IdempotencyKeyHeader(pub Option<IdempotencyKey>);

impl FromRequest for IdempotencyKeyHeader {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let invalid = |error| ApiError::validation(vec![FieldError::new("Idempotency-Key", error)]);
        ready(match request.headers().get(&IDEMPOTENCY_KEY) {
            None => Ok(Self(None)),
            Some(value) => match value.to_str() {
                Ok(text) => IdempotencyKey::parse(text).map(|key| Self(Some(key))).map_err(invalid),
                Err(_) => Err(invalid(InvalidValue::new("must be 1 to 255 printable ASCII characters"))),
            },
        })
    }
}

crate::extract::parameters_component!(
    IdempotencyKeyHeader,
    vec![Parameter {
        name: "Idempotency-Key".to_owned(),
        _in: ParameterIn::Header,
        description: Some(
            "1–255 printable ASCII characters. A retry with the same key, path and body gets the first \
             answer with `Idempotent-Replayed: true`; the same key with another path or body is 422 \
             `idempotency_key_reused`; a retry while the first runs is 409 `idempotency_in_flight`."
                .to_owned(),
        ),
        required: Some(false),
        definition: Some(ParameterDefinition::Schema(Box::new(ReferenceOr::Object(String::json_schema(
            &mut schemars::r#gen::SchemaGenerator::default(),
        ))))),
        ..Default::default()
    }]
);

/// How idempotency records are kept.
#[derive(Clone)]
pub struct IdempotencySettings {
    /// How long a record lives (`IDEMPOTENCY_TTL`).
    pub ttl: Duration,
    /// Keys the request fingerprints (`SECRET_KEY`): a registration body holds a password,
    /// and a plain digest stored beside the answer could be brute-forced at hash speed.
    pub fingerprint_key: SecretString,
}

impl std::fmt::Debug for IdempotencySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencySettings").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// Builds the idempotent write for a request, when it carries a key; keys are scoped to
/// the caller. The fingerprint is an HMAC of the method, the concrete path (with or without
/// its trailing slash) and the body: the same key and body sent for another user (another
/// path) is a reused key (422), never a replay of the first user's answer.
pub fn idempotent_write<T>(
    key: IdempotencyKeyHeader,
    caller_scope: Option<String>,
    request: &HttpRequest,
    body: &[u8],
    settings: &IdempotencySettings,
    now: OffsetDateTime,
    render: RenderResponse<T>,
) -> Option<IdempotentWrite<T>> {
    let key = key.0?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(settings.fingerprint_key.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for part in [
        b"idempotency-fingerprint".as_slice(),
        request.method().as_str().as_bytes(),
        request.path().trim_end_matches('/').as_bytes(),
        body,
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    let request = IdempotentRequest {
        caller: caller_scope.unwrap_or_else(|| ANONYMOUS_CALLER.to_owned()),
        key,
        fingerprint: mac.finalize().into_bytes().to_vec(),
        received_at: now,
        expires_at: now + settings.ttl,
    };
    Some(IdempotentWrite { request, render })
}

/// A POST answer: freshly rendered, or replayed from the idempotency record.
#[derive(Debug)]
pub struct Replayable<T: JsonSchema> {
    response: StoredResponse,
    replayed: bool,
    kind: std::marker::PhantomData<T>,
}

impl<T: JsonSchema> Replayable<T> {
    /// A fresh answer.
    pub fn fresh(response: StoredResponse) -> Self {
        Self { response, replayed: false, kind: std::marker::PhantomData }
    }

    /// A stored answer.
    pub fn replayed(response: StoredResponse) -> Self {
        Self { response, replayed: true, kind: std::marker::PhantomData }
    }
}

impl<T: JsonSchema> Responder for Replayable<T> {
    type Body = BoxBody;

    fn respond_to(self, _request: &HttpRequest) -> HttpResponse {
        let status = StatusCode::from_u16(self.response.status).unwrap_or(StatusCode::OK);
        let mut builder = HttpResponse::build(status);
        builder.content_type("application/json");
        if let Some(location) = self.response.location.and_then(|location| HeaderValue::try_from(location).ok()) {
            builder.insert_header((header::LOCATION, location));
        }
        if self.replayed {
            builder.insert_header((IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true")));
        }
        builder.body(self.response.body)
    }
}

crate::envelope::envelope_component!(
    Replayable,
    [
        (StatusCode::CREATED, "Created; `Location` names the new resource"),
        (StatusCode::OK, "Already known and updated (devices)")
    ]
);
