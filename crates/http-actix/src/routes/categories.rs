//! `/api/v1/categories`: the notification category catalogue (operators, scope `admin`),
//! and `/api/v1/users/{id}/preferences/categories/{key}`: a user's choice in one category.

use actix_web::web::{Data, Path, Query};
use apistos::{ApiComponent, api_operation};
use domain::FieldError;
use domain::auth::Scope;
use domain::category::{
    Category, CategoryChoice, CategoryDescription, CategoryKey, CategoryName, CategoryPatch, ChannelDefaults,
    NewCategory, ResolvedChoice,
};
use domain::ports::ChoiceChange;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, ServiceCaller};
use crate::dto::{ResolvedChoiceView, rfc3339};
use crate::envelope::{Created, Ok};
use crate::error::ApiError;
use crate::extract::{JsonBody, NoQuery, UserIdPath};
use crate::state::AppState;

/// What a category's users receive until they choose.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultsBody {
    /// Email on by default.
    pub email: bool,
    /// Push on by default.
    pub push: bool,
}

/// A new category.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct CreateCategoryRequest {
    /// The stable key: 1–64 characters, lower-case letters, digits, `-` and `_`, starting with
    /// a letter or digit.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$"))]
    pub key: String,
    /// Display name, 1–100 characters.
    pub name: String,
    /// Description, 1–500 characters.
    pub description: Option<String>,
    /// Sent whatever users opted out of, quiet hours included (default false).
    pub critical: Option<bool>,
    /// What users receive until they choose (default: both channels on).
    pub default: Option<DefaultsBody>,
}

impl CreateCategoryRequest {
    fn into_domain(self) -> Result<NewCategory, ApiError> {
        let key = CategoryKey::parse(&self.key).map_err(|error| FieldError::new("key", error));
        let name = CategoryName::parse(&self.name).map_err(|error| FieldError::new("name", error));
        let description = self
            .description
            .as_deref()
            .map(CategoryDescription::parse)
            .transpose()
            .map_err(|error| FieldError::new("description", error));
        match (key, name, description) {
            (Result::Ok(key), Result::Ok(name), Result::Ok(description)) => {
                let defaults = self.default.unwrap_or(DefaultsBody { email: true, push: true });
                Result::Ok(NewCategory {
                    key,
                    name,
                    description,
                    critical: self.critical.unwrap_or(false),
                    defaults: ChannelDefaults { email: defaults.email, push: defaults.push },
                })
            }
            (key, name, description) => {
                Err(ApiError::validation([key.err(), name.err(), description.err()].into_iter().flatten().collect()))
            }
        }
    }
}

/// Defaults to change; an omitted channel keeps its default.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultsPatch {
    /// Email on by default.
    pub email: Option<bool>,
    /// Push on by default.
    pub push: Option<bool>,
}

/// A change of a category; omitted fields keep their value.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct UpdateCategoryRequest {
    /// New display name.
    pub name: Option<String>,
    /// New description, or `null` to remove it.
    #[serde(default, deserialize_with = "crate::dto::nullable")]
    #[schemars(with = "Option<String>")]
    pub description: Option<Option<String>>,
    /// Whether it is critical.
    pub critical: Option<bool>,
    /// New defaults.
    pub default: Option<DefaultsPatch>,
}

impl UpdateCategoryRequest {
    fn into_domain(self) -> Result<CategoryPatch, ApiError> {
        let name = self.name.as_deref().map(CategoryName::parse).transpose().map_err(|e| FieldError::new("name", e));
        let description = match self.description {
            None => Result::Ok(None),
            Some(None) => Result::Ok(Some(None)),
            Some(Some(raw)) => {
                CategoryDescription::parse(&raw).map(|d| Some(Some(d))).map_err(|e| FieldError::new("description", e))
            }
        };
        match (name, description) {
            (Result::Ok(name), Result::Ok(description)) => Result::Ok(CategoryPatch {
                name,
                description,
                critical: self.critical,
                default_email: self.default.and_then(|defaults| defaults.email),
                default_push: self.default.and_then(|defaults| defaults.push),
            }),
            (name, description) => {
                Err(ApiError::validation([name.err(), description.err()].into_iter().flatten().collect()))
            }
        }
    }
}

/// A category of the catalogue.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct CategoryView {
    /// The stable key.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Description, or null.
    pub description: Option<String>,
    /// Sent whatever users opted out of, quiet hours included.
    pub critical: bool,
    /// What users receive until they choose.
    pub default: DefaultsBody,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

impl From<&Category> for CategoryView {
    fn from(category: &Category) -> Self {
        let Category { key, name, description, critical, defaults, created_at, updated_at } = category;
        Self {
            key: key.as_str().to_owned(),
            name: name.as_str().to_owned(),
            description: description.as_ref().map(|description| description.as_str().to_owned()),
            critical: *critical,
            default: DefaultsBody { email: defaults.email, push: defaults.push },
            created_at: rfc3339(*created_at),
            updated_at: rfc3339(*updated_at),
        }
    }
}

/// The `{key}` segment of a category route.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
pub struct CategorySegment {
    /// The category key.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$"))]
    pub key: String,
}

/// A category key from a path, or 422 naming the field.
fn path_key(raw: &str) -> Result<CategoryKey, ApiError> {
    CategoryKey::parse(raw).map_err(|error| ApiError::validation(vec![FieldError::new("key", error)]))
}

/// `?force=` of a category removal.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct RemoveQuery {
    /// `true` removes the category also while users have choices in it (dropped, each
    /// recorded in its user's consent history); default false (409 `category_in_use`).
    pub force: Option<bool>,
}

/// List categories
///
/// The catalogue, by key. Any authenticated caller (a service with any scope, or an end
/// user: a settings page lists them).
#[api_operation(tag = "categories", error_code = 400, error_code = 401, error_code = 503)]
pub async fn list(
    state: Data<AppState>,
    _caller: Caller,
    _no_query: NoQuery,
) -> Result<Ok<Vec<CategoryView>>, ApiError> {
    let categories = state.service.categories().await?;
    Result::Ok(Ok::new(categories.iter().map(CategoryView::from).collect(), "categories retrieved"))
}

/// Get a category
///
/// Any authenticated caller.
#[api_operation(
    tag = "categories",
    error_code = 400,
    error_code = 401,
    error_code = 404,
    error_code = 422,
    error_code = 503
)]
pub async fn get(
    state: Data<AppState>,
    _caller: Caller,
    path: Path<CategorySegment>,
    _no_query: NoQuery,
) -> Result<Ok<CategoryView>, ApiError> {
    let category = state.service.category(&path_key(&path.key)?).await?;
    Result::Ok(Ok::new(CategoryView::from(&category), "category retrieved"))
}

/// Create a category
///
/// A kind of message users opt in to or out of per channel. `critical` categories (security
/// alerts, legal notices) are sent whatever users opted out of, quiet hours included.
/// A taken key is 409 `category_exists`. Services with scope `admin` only.
#[api_operation(
    tag = "categories",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 408,
    error_code = 409,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn create(
    state: Data<AppState>,
    caller: ServiceCaller,
    body: JsonBody<CreateCategoryRequest>,
) -> Result<Created<CategoryView>, ApiError> {
    caller.authorize(Scope::Admin)?;
    let category = state.service.create_category(body.0.into_domain()?).await?;
    let location = format!("/api/v1/categories/{}", category.key);
    Result::Ok(Created::new(CategoryView::from(&category), location, "category created"))
}

/// Change a category
///
/// Every field is optional. A change of the defaults applies at once to every user who
/// did not choose in this category. Services with scope `admin` only.
#[api_operation(
    tag = "categories",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn update(
    state: Data<AppState>,
    caller: ServiceCaller,
    path: Path<CategorySegment>,
    body: JsonBody<UpdateCategoryRequest>,
) -> Result<Ok<CategoryView>, ApiError> {
    caller.authorize(Scope::Admin)?;
    let key = path_key(&path.key)?;
    let category = state.service.update_category(key, body.0.into_domain()?).await?;
    Result::Ok(Ok::new(CategoryView::from(&category), "category updated"))
}

/// Remove a category
///
/// 409 `category_in_use` while users have choices in it, unless `force=true`, which drops
/// those choices (each drop recorded in the user's consent history). Services with scope
/// `admin` only.
#[api_operation(
    tag = "categories",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 409,
    error_code = 422,
    error_code = 503
)]
pub async fn remove(
    state: Data<AppState>,
    caller: ServiceCaller,
    path: Path<CategorySegment>,
    query: Query<RemoveQuery>,
) -> Result<crate::envelope::NoContent, ApiError> {
    caller.authorize(Scope::Admin)?;
    let key = path_key(&path.key)?;
    state.service.remove_category(key, query.force.unwrap_or(false), caller.provenance()).await?;
    Result::Ok(crate::envelope::NoContent)
}

/// A user's choice to set; an omitted (or `null`) channel keeps the user's current setting.
/// `DELETE` returns both channels to the category's defaults.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct CategoryChoiceRequest {
    /// Email in this category.
    pub email: Option<bool>,
    /// Push in this category.
    pub push: Option<bool>,
}

/// The user's setting in one category, as it applies now.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct CategorySettingView {
    /// The category key.
    pub key: String,
    /// Whether the category is critical (sent whatever the setting says).
    pub critical: bool,
    /// The setting.
    #[serde(flatten)]
    pub setting: ResolvedChoiceView,
}

fn setting_view(category: &Category, resolved: ResolvedChoice) -> CategorySettingView {
    CategorySettingView {
        key: category.key.as_str().to_owned(),
        critical: category.critical,
        setting: ResolvedChoiceView::from(resolved),
    }
}

/// The `{id}` and `{key}` segments of a user's category route.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
pub struct UserCategorySegments {
    /// The user id (checked by its own extractor).
    pub id: String,
    /// The category key.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$"))]
    pub key: String,
}

/// Set a category choice
///
/// Sets the user's choice on the channels given (`{"email": false}` leaves push as it was);
/// answers the setting now in force. An unknown category is 404 `category_not_found`.
/// Scope `preferences.write`, or the user itself.
#[api_operation(
    tag = "preferences",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 408,
    error_code = 413,
    error_code = 415,
    error_code = 422,
    error_code = 503
)]
pub async fn set_choice(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    path: Path<UserCategorySegments>,
    body: JsonBody<CategoryChoiceRequest>,
) -> Result<Ok<CategorySettingView>, ApiError> {
    let user = caller.user(id.0, Scope::PreferencesWrite)?;
    let key = path_key(&path.key)?;
    let choice = CategoryChoice { email: body.0.email, push: body.0.push };
    let (category, resolved) =
        state.service.change_category_choice(user, key, ChoiceChange::Set(choice), caller.provenance()).await?;
    Result::Ok(Ok::new(setting_view(&category, resolved), "category choice saved"))
}

/// Clear a category choice
///
/// Forgets the user's choice: the category's defaults apply again (also when they change
/// later). Scope `preferences.write`, or the user itself.
#[api_operation(
    tag = "preferences",
    error_code = 400,
    error_code = 401,
    error_code = 403,
    error_code = 404,
    error_code = 422,
    error_code = 503
)]
pub async fn clear_choice(
    state: Data<AppState>,
    caller: Caller,
    id: UserIdPath,
    path: Path<UserCategorySegments>,
) -> Result<Ok<CategorySettingView>, ApiError> {
    let user = caller.user(id.0, Scope::PreferencesWrite)?;
    let key = path_key(&path.key)?;
    let (category, resolved) =
        state.service.change_category_choice(user, key, ChoiceChange::Clear, caller.provenance()).await?;
    Result::Ok(Ok::new(setting_view(&category, resolved), "category choice cleared"))
}
