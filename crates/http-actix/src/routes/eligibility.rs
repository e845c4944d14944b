//! Send eligibility: "may I send to this user on this channel now, and if not, when?", for
//! one user or up to 1000 at once, and bulk lookups of user representations.

use actix_web::web::{Data, Query};
use apistos::{ApiComponent, api_operation};
use domain::auth::Scope;
use domain::eligibility::{Channel, Eligibility, Targets};
use domain::user::UserId;
use domain::{FieldError, InvalidValue};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::auth::{Caller, ServiceCaller};
use crate::dto::{UserIdField, rfc3339};
use crate::envelope::Ok;
use crate::error::ApiError;
use crate::extract::{JsonBody, UserIdPath};
use crate::state::AppState;

/// The most users one bulk request may name.
pub const MAX_BULK_IDS: usize = 1000;

/// `?channel=email|push&at=<RFC 3339>`.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct EligibilityQuery {
    /// `email` or `push`.
    pub channel: String,
    /// The instant to decide for (RFC 3339); default now.
    pub at: Option<String>,
}

/// Eligibility of many users.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct BulkEligibilityRequest {
    /// `email` or `push`.
    pub channel: String,
    /// The instant to decide for (RFC 3339); default now.
    pub at: Option<String>,
    /// Up to 1000 user ids (canonical spelling); answers come in the same order.
    #[garde(length(max = MAX_BULK_IDS))]
    pub user_ids: Vec<UserIdField>,
}

/// Representations of many users.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct LookupRequest {
    /// Up to 1000 user ids (canonical spelling).
    #[garde(length(max = MAX_BULK_IDS))]
    pub ids: Vec<UserIdField>,
}

/// A push target.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenTarget {
    /// The push token.
    pub token: String,
    /// Its platform.
    pub platform: &'static str,
}

/// Where to send: the address, or the active devices' tokens (most recently seen first).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum TargetsView {
    /// The email channel.
    Email {
        /// The address.
        email: String,
    },
    /// The push channel.
    Push {
        /// The active devices.
        tokens: Vec<TokenTarget>,
    },
}

/// The decision for one user.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct EligibilityView {
    /// The user.
    pub user_id: Uuid,
    /// `email` or `push`.
    pub channel: &'static str,
    /// The instant decided for (RFC 3339).
    pub at: String,
    /// Whether a notification may be sent now.
    pub allowed: bool,
    /// `ok`, `opted_out`, `no_address`, `no_active_device`, `quiet_hours`, or
    /// `user_not_found` (bulk only), in that order of precedence.
    pub reason: &'static str,
    /// For `quiet_hours`: the first instant the user's wall clock leaves the window
    /// (daylight-saving transitions included); otherwise null. Also null, with `quiet_hours`,
    /// when that end lies beyond the year 9999 and cannot be computed: the decision then fails
    /// closed.
    pub next_allowed_at: Option<String>,
    /// Present when allowed or only held back by quiet hours.
    pub targets: Option<TargetsView>,
}

impl EligibilityView {
    fn new(user: UserId, eligibility: Eligibility) -> Self {
        let targets = eligibility.targets.map(|targets| match targets {
            Targets::Email(address) => TargetsView::Email { email: address.as_str().to_owned() },
            Targets::Tokens(tokens) => TargetsView::Push {
                tokens: tokens
                    .into_iter()
                    .map(|(token, platform)| TokenTarget {
                        token: token.as_str().to_owned(),
                        platform: platform.as_str(),
                    })
                    .collect(),
            },
        });
        Self {
            user_id: user.as_uuid(),
            channel: eligibility.channel.as_str(),
            at: rfc3339(eligibility.at),
            allowed: eligibility.allowed,
            reason: eligibility.reason.as_str(),
            next_allowed_at: eligibility.next_allowed_at.map(rfc3339),
            targets,
        }
    }

    fn not_found(user: UserId, channel: Channel, at: OffsetDateTime) -> Self {
        Self {
            user_id: user.as_uuid(),
            channel: channel.as_str(),
            at: rfc3339(at),
            allowed: false,
            reason: "user_not_found",
            next_allowed_at: None,
            targets: None,
        }
    }
}

/// Parses `channel` and `at` (default now), reporting both fields' errors at once.
fn channel_and_instant(
    channel: &str,
    at: Option<&str>,
    now: OffsetDateTime,
) -> Result<(Channel, OffsetDateTime), ApiError> {
    let channel = Channel::parse(channel);
    let at = match at {
        None => Result::Ok(now),
        Some(raw) => OffsetDateTime::parse(raw, &Rfc3339)
            .map_err(|_| InvalidValue::new("must be an RFC 3339 date-time such as 2026-11-25T22:30:00Z")),
    };
    match (channel, at) {
        (Result::Ok(channel), Result::Ok(at)) => Result::Ok((channel, at)),
        (channel, at) => Err(ApiError::validation(
            [("channel", channel.err()), ("at", at.err())]
                .into_iter()
                .filter_map(|(field, error)| error.map(|error| FieldError::new(field, error)))
                .collect(),
        )),
    }
}

/// Send eligibility of a user
///
/// Whether `channel` may be used for the user at `at` (default now), and if not, why and
/// when. Reasons in order of precedence: `opted_out`, `no_address` / `no_active_device`,
/// `quiet_hours` (with `next_allowed_at`, the end of the window in the user's time zone,
/// daylight-saving transitions included), `ok`. `targets` names the address or the active
/// tokens when allowed or only held back by quiet hours. Scope `eligibility.read`.
#[api_operation(
    tag = "eligibility",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 422,
    error_code = 503
)]
pub async fn single(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    query: Query<EligibilityQuery>,
) -> Result<Ok<EligibilityView>, ApiError> {
    let user = caller.user(id.0, Scope::EligibilityRead)?;
    let (channel, at) = channel_and_instant(&query.channel, query.at.as_deref(), state.service.now())?;
    let eligibility = state.service.eligibility(user, channel, at).await?;
    Result::Ok(Ok::new(EligibilityView::new(user, eligibility), "eligibility decided"))
}

/// Send eligibility of many users
///
/// One decision per id, in request order; unknown ids get `reason: "user_not_found"`. Up to
/// 1000 ids. Cached users are read in one cache round trip, the others in one query.
/// Service callers with scope `eligibility.read` only.
#[api_operation(
    tag = "eligibility",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn bulk(
    state: Data<AppState>,
    caller: ServiceCaller,
    body: JsonBody<BulkEligibilityRequest>,
) -> Result<Ok<Vec<EligibilityView>>, ApiError> {
    caller.authorize(Scope::EligibilityRead)?;
    let request = body.0;
    let (channel, at) = channel_and_instant(&request.channel, request.at.as_deref(), state.service.now())?;
    let ids: Vec<UserId> = request.user_ids.into_iter().map(|id| id.0).collect();
    let decisions = state.service.eligibilities(&ids, channel, at).await?;
    let views = decisions
        .into_iter()
        .map(|(user, decision)| match decision {
            Some(eligibility) => EligibilityView::new(user, eligibility),
            None => EligibilityView::not_found(user, channel, at),
        })
        .collect();
    Result::Ok(Ok::new(views, "eligibility decided"))
}

/// Users found by a bulk lookup, and the ids that name no user.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct LookupView {
    /// The users found, in request order (each once), as `GET /api/v1/users/{id}` returns them.
    #[schemars(with = "Vec<crate::dto::UserView>")]
    pub users: Vec<Box<serde_json::value::RawValue>>,
    /// The ids that name no user.
    pub missing: Vec<Uuid>,
}

/// Look up many users
///
/// The representations of up to 1000 users (as `GET /api/v1/users/{id}` returns them), and
/// the ids that name no user. Service callers with scope `users.lookup` only.
#[api_operation(
    tag = "users",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn lookup(
    state: Data<AppState>,
    caller: ServiceCaller,
    body: JsonBody<LookupRequest>,
) -> Result<Ok<LookupView>, ApiError> {
    caller.authorize(Scope::UsersLookup)?;
    let ids: Vec<UserId> = body.0.ids.into_iter().map(|id| id.0).collect();
    let found = state.service.encoded_profiles(&ids).await?;
    let mut seen = std::collections::HashSet::new();
    let mut users = Vec::new();
    let mut missing = Vec::new();
    for (id, encoded) in found {
        if !seen.insert(id) {
            continue;
        }
        match encoded.and_then(|bytes| String::from_utf8(bytes.to_vec()).ok()) {
            Some(json) => match serde_json::value::RawValue::from_string(json) {
                Result::Ok(raw) => users.push(raw),
                Err(_) => missing.push(id.as_uuid()),
            },
            None => missing.push(id.as_uuid()),
        }
    }
    Result::Ok(Ok::new(LookupView { users, missing }, "users looked up"))
}
