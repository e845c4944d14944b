//! `/api/v1/events`: the change events as a pull feed, oldest first, for consumers without
//! the broker and for those catching up after lost messages.

use actix_web::web::{Data, Query};
use apistos::{ApiComponent, api_operation};
use domain::auth::Scope;
use domain::{FieldError, InvalidValue, ServiceError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::ServiceCaller;
use crate::envelope::Ok;
use crate::error::ApiError;
use crate::state::AppState;

/// The most events one page may hold.
const MAX_PAGE: u32 = 1_000;
/// Events per page when `limit` is omitted.
const DEFAULT_PAGE: u32 = 100;

/// `?after=&limit=`.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// The id of the last event already received (from the feed or the broker); omitted:
    /// from the oldest event kept.
    pub after: Option<String>,
    /// Events per page, 1–1000 (default 100).
    pub limit: Option<u32>,
}

impl FeedQuery {
    fn parse(&self) -> Result<(Option<Uuid>, u32), ApiError> {
        let mut errors = Vec::new();
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            errors.push(FieldError::new("limit", InvalidValue::new("must be from 1 to 1000")));
        }
        let after = match self.after.as_deref() {
            None => None,
            // One spelling per id, as everywhere: the canonical lower-case hyphenated form.
            Some(raw) => match Uuid::try_parse(raw) {
                Result::Ok(id) if id.hyphenated().to_string() == raw => Some(id),
                _ => {
                    errors.push(FieldError::new(
                        "after",
                        InvalidValue::new("must be the id of an event, lower-case and hyphenated"),
                    ));
                    None
                }
            },
        };
        if errors.is_empty() { Result::Ok((after, limit)) } else { Err(ApiError::validation(errors)) }
    }
}

/// A page of the feed.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct FeedPageView {
    /// CloudEvents 1.0 (structured JSON), oldest first: `id`, `source`, `type`, `subject`,
    /// `time`, `sequence` (the subject's, zero-padded), `datacontenttype` and `data`.
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` to read on (the last event's id, or the `after` given when the page
    /// is empty).
    pub next_after: Option<String>,
    /// Whether the page is full: more events may follow at once.
    pub has_more: bool,
}

/// Change events feed
///
/// Every committed change (users, preferences, category choices, devices, the category
/// catalogue) as CloudEvents, oldest first, in the order their transactions committed: a
/// cursor never skips an event. The same events the broker receives (`AMQP_URL`), with the
/// same ids: a consumer that lost messages reads from the last id it processed. Events are
/// kept `EVENTS_RETENTION` (7 days by default); an `after` older than that answers 410
/// `cursor_expired`. Scope `events.read`.
#[api_operation(
    tag = "events",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 410,
    error_code = 422,
    error_code = 503
)]
pub async fn feed(
    state: Data<AppState>,
    caller: ServiceCaller,
    query: Query<FeedQuery>,
) -> Result<Ok<FeedPageView>, ApiError> {
    caller.authorize(Scope::EventsRead)?;
    let (after, limit) = query.parse()?;
    let events = state
        .events
        .feed(after, limit)
        .await
        .map_err(|error| ApiError::from(ServiceError::from(error)))?
        .ok_or_else(ApiError::cursor_expired)?;
    let has_more = events.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
    let next_after = events.last().map(|event| event.id).or(after).map(|id| id.to_string());
    let events = events
        .iter()
        .map(|event| {
            let bytes = event.to_cloudevent().map_err(|error| ApiError::internal(Box::new(error)))?;
            serde_json::from_slice(&bytes).map_err(|error| ApiError::internal(Box::new(error)))
        })
        .collect::<Result<Vec<serde_json::Value>, ApiError>>()?;
    Result::Ok(Ok::new(FeedPageView { events, next_after, has_more }, "events retrieved"))
}
