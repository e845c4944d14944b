//! The response envelope every body uses, success or error, and the responders that wrap
//! handler results in it:
//! `{"success", "data", "error", "message", "meta"}` (+ `details` on validation errors).

use std::collections::BTreeMap;

use actix_web::body::BoxBody;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderValue;
use actix_web::{HttpRequest, HttpResponse, Responder};
use apistos::paths::{MediaType, Response, Responses};
use apistos::reference_or::ReferenceOr;
use apistos::{ApiComponent, Schema};
use schemars::JsonSchema;
use serde::Serialize;

/// The body of every response.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct Envelope<T: JsonSchema> {
    /// Whether the request succeeded.
    pub success: bool,
    /// The result: an object, an array or null.
    pub data: Option<T>,
    /// A machine-readable error code (`user_not_found`, `validation_error`, ...), null on success.
    pub error: Option<&'static str>,
    /// A human-readable summary.
    pub message: String,
    /// Pagination, for lists.
    pub meta: Option<PageMeta>,
}

/// Pagination of a list response.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PageMeta {
    /// Items in all pages.
    pub total: u64,
    /// Items per page.
    pub limit: u32,
    /// This page, from 1.
    pub page: u32,
    /// Number of pages.
    pub total_pages: u64,
    /// Whether a later page exists.
    pub has_next: bool,
    /// Whether an earlier page exists.
    pub has_previous: bool,
}

impl PageMeta {
    /// Derives the page counts.
    pub fn new(total: u64, page: u32, limit: u32) -> Self {
        let total_pages = total.div_ceil(u64::from(limit));
        Self {
            total,
            limit,
            page,
            total_pages,
            has_next: u64::from(page) < total_pages,
            has_previous: page > 1 && total_pages > 0,
        }
    }
}

/// The bytes of a success envelope around `data`.
pub fn success_bytes<T: Serialize + JsonSchema>(data: T, message: &'static str) -> Vec<u8> {
    let envelope = Envelope { success: true, data: Some(data), error: None, message: message.into(), meta: None };
    // Views are plain structs of strings, numbers and booleans: serialization cannot fail.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

fn json_response<T: Serialize + JsonSchema>(status: StatusCode, body: &Envelope<T>) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => HttpResponse::build(status).content_type(mime_json()).body(bytes),
        Err(error) => {
            tracing::error!(%error, "response serialization failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}

fn mime_json() -> HeaderValue {
    HeaderValue::from_static("application/json")
}

/// A 200 response with `data` (and `meta` for lists).
#[derive(Debug)]
pub struct Ok<T: JsonSchema> {
    data: T,
    message: &'static str,
    meta: Option<PageMeta>,
}

impl<T: JsonSchema> Ok<T> {
    /// `data` with a summary.
    pub fn new(data: T, message: &'static str) -> Self {
        Self { data, message, meta: None }
    }

    /// A page of `data`.
    pub fn page(data: T, message: &'static str, meta: PageMeta) -> Self {
        Self { data, message, meta: Some(meta) }
    }
}

impl<T: Serialize + JsonSchema> Responder for Ok<T> {
    type Body = BoxBody;

    fn respond_to(self, _request: &HttpRequest) -> HttpResponse {
        json_response(
            StatusCode::OK,
            &Envelope {
                success: true,
                data: Some(self.data),
                error: None,
                message: self.message.into(),
                meta: self.meta,
            },
        )
    }
}

/// A 200 response whose `data` is already serialized (a cached representation of `T`):
/// the bytes are spliced into the envelope without parsing them again.
#[derive(Debug)]
pub struct OkEncoded<T: JsonSchema> {
    data: std::sync::Arc<[u8]>,
    message: &'static str,
    kind: std::marker::PhantomData<T>,
}

impl<T: JsonSchema> OkEncoded<T> {
    /// Serialized `data` with a summary; `message` must not need JSON escaping.
    pub fn new(data: std::sync::Arc<[u8]>, message: &'static str) -> Self {
        Self { data, message, kind: std::marker::PhantomData }
    }
}

impl<T: JsonSchema> Responder for OkEncoded<T> {
    type Body = BoxBody;

    fn respond_to(self, _request: &HttpRequest) -> HttpResponse {
        const PREFIX: &[u8] = br#"{"success":true,"data":"#;
        const BEFORE_MESSAGE: &[u8] = br#","error":null,"message":""#;
        const SUFFIX: &[u8] = br#"","meta":null}"#;
        let message = self.message.as_bytes();
        let mut body =
            Vec::with_capacity(PREFIX.len() + self.data.len() + BEFORE_MESSAGE.len() + message.len() + SUFFIX.len());
        for part in [PREFIX, &self.data, BEFORE_MESSAGE, message, SUFFIX] {
            body.extend_from_slice(part);
        }
        HttpResponse::Ok().content_type(mime_json()).body(body)
    }
}

/// A 201 response with `data` and the `Location` of what was created.
#[derive(Debug)]
pub struct Created<T: JsonSchema> {
    data: T,
    location: String,
    message: &'static str,
}

impl<T: JsonSchema> Created<T> {
    /// `data`, found at `location`, with a summary.
    pub fn new(data: T, location: String, message: &'static str) -> Self {
        Self { data, location, message }
    }
}

impl<T: Serialize + JsonSchema> Responder for Created<T> {
    type Body = BoxBody;

    fn respond_to(self, _request: &HttpRequest) -> HttpResponse {
        let mut response = json_response(
            StatusCode::CREATED,
            &Envelope { success: true, data: Some(self.data), error: None, message: self.message.into(), meta: None },
        );
        if let Ok(location) = HeaderValue::try_from(self.location) {
            response.headers_mut().insert(actix_web::http::header::LOCATION, location);
        }
        response
    }
}

/// A 204 response without a body.
#[derive(Debug)]
pub struct NoContent;

impl Responder for NoContent {
    type Body = BoxBody;

    fn respond_to(self, _request: &HttpRequest) -> HttpResponse {
        HttpResponse::NoContent().finish()
    }
}

/// An OpenAPI response whose body is the `Envelope<T>` schema.
pub(crate) fn envelope_response<T: JsonSchema>(description: &str) -> Response {
    let name = <Envelope<T> as JsonSchema>::schema_name();
    Response {
        description: description.to_owned(),
        content: BTreeMap::from([(
            "application/json".to_owned(),
            MediaType {
                schema: Some(ReferenceOr::Reference { _ref: format!("#/components/schemas/{name}") }),
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

/// Documents responses by status.
pub(crate) fn responses(entries: Vec<(StatusCode, Response)>) -> Option<Responses> {
    Some(Responses {
        responses: entries
            .into_iter()
            .map(|(status, response)| (status.as_str().to_owned(), ReferenceOr::Object(response)))
            .collect(),
        ..Default::default()
    })
}

/// Implements `ApiComponent` for a responder of `T` by documenting `Envelope<T>` with the
/// given statuses.
macro_rules! envelope_component {
    ($responder:ident, [$(($status:expr, $description:expr)),+]) => {
        impl<T: schemars::JsonSchema> apistos::ApiComponent for $responder<T> {
            fn child_schemas() -> Vec<(String, apistos::reference_or::ReferenceOr<apistos::Schema>)> {
                let mut schemas = <$crate::envelope::Envelope<T> as apistos::ApiComponent>::child_schemas();
                schemas.extend(<$crate::envelope::Envelope<T> as apistos::ApiComponent>::schema());
                schemas
            }

            fn schema() -> Option<(String, apistos::reference_or::ReferenceOr<apistos::Schema>)> {
                <$crate::envelope::Envelope<T> as apistos::ApiComponent>::schema()
            }

            fn responses(_content_type: Option<String>) -> Option<apistos::paths::Responses> {
                $crate::envelope::responses(vec![$(($status, $crate::envelope::envelope_response::<T>($description))),+])
            }
        }
    };
}
pub(crate) use envelope_component;

envelope_component!(Ok, [(StatusCode::OK, "Success")]);
envelope_component!(OkEncoded, [(StatusCode::OK, "Success")]);
envelope_component!(Created, [(StatusCode::CREATED, "Created; `Location` names it")]);

impl ApiComponent for NoContent {
    fn child_schemas() -> Vec<(String, ReferenceOr<Schema>)> {
        Vec::new()
    }

    fn schema() -> Option<(String, ReferenceOr<Schema>)> {
        None
    }

    fn responses(_content_type: Option<String>) -> Option<Responses> {
        responses(vec![(
            StatusCode::NO_CONTENT,
            Response { description: "Done; no body".to_owned(), ..Default::default() },
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::PageMeta;

    #[test]
    fn page_meta_counts_pages() {
        let meta = PageMeta::new(45, 2, 20);
        assert_eq!(meta.total_pages, 3);
        assert!(meta.has_next && meta.has_previous);
        let empty = PageMeta::new(0, 1, 20);
        assert_eq!(empty.total_pages, 0);
        assert!(!empty.has_next && !empty.has_previous);
    }
}
