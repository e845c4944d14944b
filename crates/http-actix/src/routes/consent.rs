//! `/api/v1/users/{id}/consent-history`: every change to what a user agreed to receive and
//! where they can be reached, newest first.

use actix_web::web::{Data, Query};
use apistos::{ApiComponent, api_operation};
use domain::auth::Scope;
use domain::consent::{ConsentRecord, ConsentValue, HistoryPage};
use domain::{FieldError, InvalidValue};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::dto::{rfc3339, string_enum};
use crate::envelope::Ok;
use crate::error::ApiError;
use crate::extract::UserIdPath;
use crate::state::AppState;

/// The most rows one page may hold.
const MAX_PAGE: u32 = 100;
/// Rows per page when `limit` is omitted.
const DEFAULT_PAGE: u32 = 20;

/// `?limit=&cursor=`.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Rows per page, 1–100 (default 20).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page, to read older rows.
    pub cursor: Option<String>,
}

impl HistoryQuery {
    fn parse(&self) -> Result<(u32, Option<i64>), ApiError> {
        let mut errors = Vec::new();
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            errors.push(FieldError::new("limit", InvalidValue::new("must be from 1 to 100")));
        }
        let cursor = match self.cursor.as_deref() {
            None => None,
            Some(raw) => match raw.parse::<i64>() {
                Result::Ok(cursor) if cursor > 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Some(cursor),
                _ => {
                    errors.push(FieldError::new(
                        "cursor",
                        InvalidValue::new("must be the next_cursor of a previous page"),
                    ));
                    None
                }
            },
        };
        if errors.is_empty() { Result::Ok((limit, cursor)) } else { Err(ApiError::validation(errors)) }
    }
}

/// Who made a change.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ActorView {
    /// `user` (the user itself), `service` (a service key) or `trusted` (a caller the
    /// network vouches for).
    #[schemars(schema_with = "actor_kind_schema")]
    pub kind: &'static str,
    /// The user's id, or the service's configured name; never a secret.
    pub name: String,
}

fn actor_kind_schema(_generator: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
    string_enum(&["user", "service", "trusted"])
}

/// One recorded change.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ConsentRecordView {
    /// When the change was made (RFC 3339).
    pub at: String,
    /// What changed: `preferences.email`, `preferences.push`, `preferences.quiet_hours`
    /// (`HH:MM-HH:MM`), `preferences.timezone`, `contact.email`, `contact.phone`,
    /// `categories.<key>.email|push` (null: the category's default), or
    /// `devices.<device id>.active` (null: the user had no such device).
    pub field: String,
    /// The value before (null: unset).
    pub old: serde_json::Value,
    /// The value after (null: unset).
    pub new: serde_json::Value,
    /// Who changed it.
    pub actor: ActorView,
    /// The `X-Request-Id` of the request that changed it.
    pub request_id: Option<String>,
}

fn json_value(value: &ConsentValue) -> serde_json::Value {
    match value {
        ConsentValue::Unset => serde_json::Value::Null,
        ConsentValue::Flag(flag) => serde_json::Value::Bool(*flag),
        ConsentValue::Text(text) => serde_json::Value::String(text.clone()),
    }
}

impl From<&ConsentRecord> for ConsentRecordView {
    fn from(record: &ConsentRecord) -> Self {
        Self {
            at: rfc3339(record.at),
            field: record.change.field.to_string(),
            old: json_value(&record.change.old),
            new: json_value(&record.change.new),
            actor: ActorView { kind: record.actor.kind.as_str(), name: record.actor.name.clone() },
            request_id: record.request_id.clone(),
        }
    }
}

/// A page of a user's consent history.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct HistoryPageView {
    /// The changes, newest first.
    pub records: Vec<ConsentRecordView>,
    /// Pass as `cursor` to read the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

impl From<&HistoryPage> for HistoryPageView {
    fn from(page: &HistoryPage) -> Self {
        Self {
            records: page.records.iter().map(ConsentRecordView::from).collect(),
            next_cursor: page.next_cursor.map(|cursor| cursor.to_string()),
        }
    }
}

/// Consent history of a user
///
/// Every change to what the user agreed to receive and where they can be reached (channel
/// switches, category choices, quiet hours, time zone, email and phone, device activation),
/// newest first, each with who made it and in which request. Append-only: no route changes
/// or deletes a row; erasing the user erases its history with it. Scope `consent.read` (a
/// history holds past addresses: not part of `users.read`, nor of what a caller the network
/// vouches for gets), or the user itself.
#[api_operation(
    tag = "preferences",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 422,
    error_code = 503
)]
pub async fn history(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    query: Query<HistoryQuery>,
) -> Result<Ok<HistoryPageView>, ApiError> {
    let user = caller.user(id.0, Scope::ConsentRead)?;
    let (limit, before) = query.parse()?;
    let page = state.service.consent_history(user, limit, before).await?;
    Result::Ok(Ok::new(HistoryPageView::from(&page), "consent history retrieved"))
}
