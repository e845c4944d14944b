//! Send eligibility: "may I send to this user on this channel now, and if not, when?", for
//! one user or up to 1000 at once, and bulk lookups of user representations.

use actix_web::web::{Data, Query};
use apistos::{ApiComponent, api_operation};
use domain::EligibilityError;
use domain::auth::Scope;
use domain::category::CategoryKey;
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

/// `?channel=email|push&category=<key>&at=<RFC 3339>&as_recorded=true`.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct EligibilityQuery {
    /// `email` or `push`.
    pub channel: String,
    /// A category key: its critical flag, and the user's choice in it (or its default),
    /// join the decision.
    pub category: Option<String>,
    /// The instant to decide for (RFC 3339); default now.
    pub at: Option<String>,
    /// `true` answers with the user's consent as it was recorded at `at` (a past instant,
    /// required): rebuilt from the consent history, with the category as it was then.
    pub as_recorded: Option<bool>,
}

/// Eligibility of many users.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct BulkEligibilityRequest {
    /// `email` or `push`.
    pub channel: String,
    /// A category key, for every id; an unknown one answers `unknown_category` for each.
    pub category: Option<String>,
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
    /// In order of precedence: `no_address`, `no_active_device` (nowhere to send);
    /// `critical` (allowed: a critical category ignores opt-outs and quiet hours);
    /// `opted_out` (the channel's global switch), `category_opted_out`, `quiet_hours`; `ok`.
    /// Bulk only: `user_not_found`, `unknown_category`.
    #[schemars(schema_with = "reason_schema")]
    pub reason: &'static str,
    /// For `quiet_hours`: the first instant the user's wall clock leaves the window
    /// (daylight-saving transitions included); otherwise null. Also null, with `quiet_hours`,
    /// when that end lies beyond the year 9999 and cannot be computed: the decision then fails
    /// closed.
    pub next_allowed_at: Option<String>,
    /// Present when allowed or only held back by quiet hours (never in an as-recorded
    /// answer: it says whether a send was allowed then, not where one would go today).
    pub targets: Option<TargetsView>,
    /// The category decided for, or null.
    pub category: Option<String>,
    /// Whether the answer was rebuilt from the consent history as recorded at `at`.
    pub as_recorded: bool,
    /// As-recorded answers only: when the last recorded change at or before `at` was made
    /// (the registration at the earliest); the state the answer rests on held from then.
    pub recorded_state_since: Option<String>,
}

fn reason_schema(_generator: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
    crate::dto::string_enum(&[
        "ok",
        "critical",
        "opted_out",
        "category_opted_out",
        "no_address",
        "no_active_device",
        "quiet_hours",
        "user_not_found",
        "unknown_category",
    ])
}

impl EligibilityView {
    fn new(user: UserId, eligibility: Eligibility, category: Option<&CategoryKey>) -> Self {
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
            category: category.map(|key| key.as_str().to_owned()),
            as_recorded: false,
            recorded_state_since: None,
        }
    }

    /// A refusal without a decision (bulk): `user_not_found` or `unknown_category`.
    fn undecided(
        user: UserId,
        channel: Channel,
        category: Option<&CategoryKey>,
        at: OffsetDateTime,
        reason: &'static str,
    ) -> Self {
        Self {
            user_id: user.as_uuid(),
            channel: channel.as_str(),
            at: rfc3339(at),
            allowed: false,
            reason,
            next_allowed_at: None,
            targets: None,
            category: category.map(|key| key.as_str().to_owned()),
            as_recorded: false,
            recorded_state_since: None,
        }
    }
}

/// What a decision is asked for.
struct Question {
    channel: Channel,
    category: Option<CategoryKey>,
    at: OffsetDateTime,
}

/// Parses `channel`, `category` and `at` (default now), reporting every field's error at
/// once. `as_recorded` needs an explicit `at` that is not in the future.
fn question(
    channel: &str,
    category: Option<&str>,
    at: Option<&str>,
    as_recorded: bool,
    now: OffsetDateTime,
) -> Result<Question, ApiError> {
    let channel = Channel::parse(channel);
    let category = category.map(CategoryKey::parse).transpose();
    let at = match at {
        None if as_recorded => Err(InvalidValue::new("as_recorded=true needs the past instant to answer for")),
        None => Result::Ok(now),
        Some(raw) => OffsetDateTime::parse(raw, &Rfc3339)
            .map_err(|_| InvalidValue::new("must be an RFC 3339 date-time such as 2026-11-25T22:30:00Z"))
            .and_then(|at| {
                if as_recorded && at > now {
                    Err(InvalidValue::new("with as_recorded=true, must not be in the future: nothing is recorded yet"))
                } else {
                    Result::Ok(at)
                }
            }),
    };
    match (channel, category, at) {
        (Result::Ok(channel), Result::Ok(category), Result::Ok(at)) => Result::Ok(Question { channel, category, at }),
        (channel, category, at) => Err(ApiError::validation(
            [("channel", channel.err()), ("category", category.err()), ("at", at.err())]
                .into_iter()
                .filter_map(|(field, error)| error.map(|error| FieldError::new(field, error)))
                .collect(),
        )),
    }
}

/// Send eligibility of a user
///
/// Whether `channel` may be used for the user at `at` (default now), in `category` if
/// given, and if not, why and when. Reasons in order of precedence: `no_address` /
/// `no_active_device`; `critical` (allowed: a critical category ignores opt-outs and quiet
/// hours); `opted_out` (the channel's global switch), `category_opted_out`, `quiet_hours`
/// (with `next_allowed_at`, the end of the window in the user's time zone, daylight-saving
/// transitions included); `ok`. `targets` names the address or the active tokens when
/// allowed or only held back by quiet hours. An unknown category is 404
/// `category_not_found`.
///
/// With `as_recorded=true` and a past `at`, the answer is the user's consent as it was
/// recorded then, rebuilt from the consent history (with the category as the catalogue had
/// it then); `recorded_state_since` says since when that state held, and `targets` is null.
/// An instant before the user registered is 404 `not_yet_registered`. Scope
/// `eligibility.read`, or the user itself.
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
    let as_recorded = query.as_recorded.unwrap_or(false);
    let Question { channel, category, at } =
        question(&query.channel, query.category.as_deref(), query.at.as_deref(), as_recorded, state.service.now())?;
    if as_recorded {
        let recorded = state.service.eligibility_as_recorded(user, channel, category.as_ref(), at).await?;
        let view = EligibilityView {
            as_recorded: true,
            recorded_state_since: Some(rfc3339(recorded.rests_on)),
            ..EligibilityView::new(user, recorded.eligibility, category.as_ref())
        };
        return Result::Ok(Ok::new(view, "eligibility as recorded"));
    }
    let eligibility = state.service.eligibility(user, channel, category.as_ref(), at).await?;
    Result::Ok(Ok::new(EligibilityView::new(user, eligibility, category.as_ref()), "eligibility decided"))
}

/// Send eligibility of many users
///
/// One decision per id, in request order, on `channel` (in `category` if given); unknown
/// ids get `reason: "user_not_found"`, and every id gets `unknown_category` when the
/// category does not exist. Up to 1000 ids. Cached users are read in one cache round trip, the others in one query.
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
    let Question { channel, category, at } =
        question(&request.channel, request.category.as_deref(), request.at.as_deref(), false, state.service.now())?;
    let ids: Vec<UserId> = request.user_ids.into_iter().map(|id| id.0).collect();
    let category = category.as_ref();
    let views = match state.service.eligibilities(&ids, channel, category, at).await {
        Result::Ok(decisions) => decisions
            .into_iter()
            .map(|(user, decision)| match decision {
                Some(eligibility) => EligibilityView::new(user, eligibility, category),
                None => EligibilityView::undecided(user, channel, category, at, "user_not_found"),
            })
            .collect(),
        Err(EligibilityError::CategoryNotFound) => ids
            .iter()
            .map(|user| EligibilityView::undecided(*user, channel, category, at, "unknown_category"))
            .collect(),
        Err(error) => return Err(error.into()),
    };
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
