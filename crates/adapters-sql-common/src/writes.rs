//! What both stores write: a new user, a contact change, a preferences row and a partial
//! preferences change, a category, its revisions and users' choices, each built from its
//! domain value by exhaustive destructuring, so that a field added to the domain value does
//! not build until it is written here; and the consent history's rows ([`HistoryEntry`]).

use domain::consent::{Actor, ConsentChange, Provenance};
use domain::user::UserId;
use uuid::Uuid;

/// A row to append to `consent_history`, all but its time: each store fixes `at` in the
/// write's transaction, under the user's consent lock, once for the write (PostgreSQL's
/// clock, or the write's `now`), never before the user's latest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Whose consent changed.
    pub user_id: Uuid,
    /// The field's stored name.
    pub field: String,
    /// The value before.
    pub old_value: Option<String>,
    /// The value after.
    pub new_value: Option<String>,
    /// The actor's kind (`user`, `service`, `trusted`).
    pub actor_kind: &'static str,
    /// The actor's name.
    pub actor_name: String,
    /// The request's id.
    pub request_id: Option<String>,
}

impl HistoryEntry {
    /// The row that records `change` of `user`'s consent, made by `actor` in the request of
    /// `by`.
    pub fn new(user: UserId, change: ConsentChange, actor: &Actor, by: &Provenance) -> Self {
        let ConsentChange { field, old, new } = change;
        Self {
            user_id: user.as_uuid(),
            field: field.to_string(),
            old_value: old.to_stored(),
            new_value: new.to_stored(),
            actor_kind: actor.kind.as_str(),
            actor_name: actor.name.clone(),
            request_id: by.request_id.clone(),
        }
    }
}

/// The rows that record `changes` of `user`'s consent, made by `by` (the user itself when
/// `by` names no actor).
pub fn history_entries(
    user: UserId,
    changes: impl IntoIterator<Item = ConsentChange>,
    by: &Provenance,
) -> Vec<HistoryEntry> {
    let actor = by.actor_for(user);
    changes.into_iter().map(|change| HistoryEntry::new(user, change, &actor, by)).collect()
}

/// The distinct users of `entries`, in UUID order: the order in which a write takes their
/// consent locks, so that two writes that lock several users never deadlock.
pub fn users_of(entries: &[HistoryEntry]) -> Vec<Uuid> {
    let mut users: Vec<Uuid> = entries.iter().map(|entry| entry.user_id).collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// Declares the shared write structs with the visibility given: `NewUserValues` and
/// `ContactChangeset` (table `users`), `PreferencesValues` and `PreferencesChangeset` (table
/// `notification_preferences`), `CategoryValues` (`notification_categories`, to insert and
/// to update), `RevisionValues` (`category_revisions`) and `ChoiceValues`
/// (`category_choices`, to insert and to update). `$id` is the store's type to bind a stored
/// UUID (`From<Uuid>`). Invoke it where the store's table modules are in scope.
///
/// The changesets leave `None` fields out of the `SET` list: that is the rule of
/// [`PreferencesUpdate`] and [`ContactUpdate`] ("`None` leaves a field as it is"), applied
/// by the database in one statement, so that concurrent updates of different fields all
/// survive. The contract suite checks both stores against the domain's
/// [`Preferences::with_update`].
///
/// [`PreferencesUpdate`]: domain::preferences::PreferencesUpdate
/// [`ContactUpdate`]: domain::user::ContactUpdate
/// [`Preferences::with_update`]: domain::preferences::Preferences::with_update
#[macro_export]
macro_rules! row_writes {
    ($vis:vis, $id:ty) => {
        /// A new user's row. Here and in the other inserts, `None` is bound as `NULL` (each
        /// such column's default) rather than written `DEFAULT`: diesel keeps an insert
        /// prepared only when its text cannot change with the values.
        #[derive(diesel::Insertable)]
        #[diesel(table_name = users, treat_none_as_default_value = false)]
        $vis struct NewUserValues<'a> {
            id: $id,
            name: &'a str,
            email: &'a str,
            phone: Option<&'a str>,
            password_hash: &'a str,
            created_at: ::time::OffsetDateTime,
            updated_at: ::time::OffsetDateTime,
        }

        impl<'a> NewUserValues<'a> {
            /// The row of `record` (its preferences and device go to their own tables).
            $vis fn new(record: &'a ::domain::ports::NewUserRecord) -> Self {
                let ::domain::ports::NewUserRecord {
                    id,
                    name,
                    email,
                    phone,
                    password_hash,
                    created_at,
                    preferences: _,
                    device: _,
                    if_token_held: _,
                    provenance: _,
                } = record;
                Self {
                    id: <$id>::from(id.as_uuid()),
                    name: name.as_str(),
                    email: email.as_str(),
                    phone: phone.as_ref().map(|phone| phone.as_str()),
                    password_hash: password_hash.as_str(),
                    created_at: *created_at,
                    updated_at: *created_at,
                }
            }
        }

        /// A contact change of `users`; `None` fields are left out of the `SET` list.
        #[derive(diesel::AsChangeset)]
        #[diesel(table_name = users)]
        $vis struct ContactChangeset<'a> {
            name: Option<&'a str>,
            email: Option<&'a str>,
            phone: Option<Option<&'a str>>,
            updated_at: ::time::OffsetDateTime,
        }

        impl<'a> ContactChangeset<'a> {
            /// The change `update` makes at `now`.
            $vis fn new(update: &'a ::domain::user::ContactUpdate, now: ::time::OffsetDateTime) -> Self {
                let ::domain::user::ContactUpdate { name, email, phone } = update;
                Self {
                    name: name.as_ref().map(|name| name.as_str()),
                    email: email.as_ref().map(|email| email.as_str()),
                    phone: phone.as_ref().map(|phone| phone.as_ref().map(|phone| phone.as_str())),
                    updated_at: now,
                }
            }
        }

        /// A whole preferences row, to insert.
        #[derive(diesel::Insertable)]
        #[diesel(table_name = notification_preferences, treat_none_as_default_value = false)]
        $vis struct PreferencesValues<'a> {
            user_id: $id,
            email_enabled: bool,
            push_enabled: bool,
            quiet_hours_start: Option<::time::Time>,
            quiet_hours_end: Option<::time::Time>,
            timezone: &'a str,
            updated_at: ::time::OffsetDateTime,
        }

        impl<'a> PreferencesValues<'a> {
            /// The row that stores `preferences` for `user`.
            $vis fn new(user: ::domain::user::UserId, preferences: &'a ::domain::preferences::Preferences) -> Self {
                let ::domain::preferences::Preferences { email, push, quiet_hours, timezone, updated_at } = preferences;
                Self {
                    user_id: <$id>::from(user.as_uuid()),
                    email_enabled: *email,
                    push_enabled: *push,
                    quiet_hours_start: quiet_hours.map(|window| window.start().as_time()),
                    quiet_hours_end: quiet_hours.map(|window| window.end().as_time()),
                    timezone: timezone.as_str(),
                    updated_at: *updated_at,
                }
            }
        }

        /// A partial change of `notification_preferences`; `None` fields are left out of the
        /// `SET` list, and the quiet window's two columns change together.
        #[derive(diesel::AsChangeset)]
        #[diesel(table_name = notification_preferences)]
        $vis struct PreferencesChangeset<'a> {
            email_enabled: Option<bool>,
            push_enabled: Option<bool>,
            quiet_hours_start: Option<Option<::time::Time>>,
            quiet_hours_end: Option<Option<::time::Time>>,
            timezone: Option<&'a str>,
            updated_at: ::time::OffsetDateTime,
        }

        impl<'a> PreferencesChangeset<'a> {
            /// The change `update` makes at `now`.
            $vis fn new(update: &'a ::domain::preferences::PreferencesUpdate, now: ::time::OffsetDateTime) -> Self {
                let ::domain::preferences::PreferencesUpdate { email, push, quiet_hours, timezone } = update;
                Self {
                    email_enabled: *email,
                    push_enabled: *push,
                    quiet_hours_start: quiet_hours.map(|window| window.map(|window| window.start().as_time())),
                    quiet_hours_end: quiet_hours.map(|window| window.map(|window| window.end().as_time())),
                    timezone: timezone.as_ref().map(|zone| zone.as_str()),
                    updated_at: now,
                }
            }
        }

        /// A whole category row: inserted when created, set (all but its key and creation
        /// time) when changed.
        #[derive(diesel::Insertable, diesel::AsChangeset)]
        #[diesel(
            table_name = notification_categories,
            primary_key(key),
            treat_none_as_null = true,
            treat_none_as_default_value = false
        )]
        $vis struct CategoryValues<'a> {
            key: &'a str,
            name: &'a str,
            description: Option<&'a str>,
            critical: bool,
            default_email: bool,
            default_push: bool,
            #[diesel(skip_update)]
            created_at: ::time::OffsetDateTime,
            updated_at: ::time::OffsetDateTime,
        }

        impl<'a> CategoryValues<'a> {
            /// The row that stores `category`.
            $vis fn new(category: &'a ::domain::category::Category) -> Self {
                let ::domain::category::Category { key, name, description, critical, defaults, created_at, updated_at } =
                    category;
                let ::domain::category::ChannelDefaults { email, push } = defaults;
                Self {
                    key: key.as_str(),
                    name: name.as_str(),
                    description: description.as_ref().map(|description| description.as_str()),
                    critical: *critical,
                    default_email: *email,
                    default_push: *push,
                    created_at: *created_at,
                    updated_at: *updated_at,
                }
            }
        }

        /// A revision of a category: what it is from `at` on, or that it was removed then.
        #[derive(diesel::Insertable)]
        #[diesel(table_name = category_revisions, treat_none_as_default_value = false)]
        $vis struct RevisionValues<'a> {
            key: &'a str,
            at: ::time::OffsetDateTime,
            name: &'a str,
            description: Option<&'a str>,
            critical: bool,
            default_email: bool,
            default_push: bool,
            removed: bool,
        }

        impl<'a> RevisionValues<'a> {
            /// The revision that `category` is as it is now (`removed`: it was just removed),
            /// made at `at`.
            $vis fn new(category: &'a ::domain::category::Category, at: ::time::OffsetDateTime, removed: bool) -> Self {
                let ::domain::category::Category { key, name, description, critical, defaults, created_at: _, updated_at: _ } =
                    category;
                let ::domain::category::ChannelDefaults { email, push } = defaults;
                Self {
                    key: key.as_str(),
                    at,
                    name: name.as_str(),
                    description: description.as_ref().map(|description| description.as_str()),
                    critical: *critical,
                    default_email: *email,
                    default_push: *push,
                    removed,
                }
            }
        }

        /// A user's non-empty choice in a category: inserted, or set on the existing row
        /// (`None` channels stored as `NULL`, the default).
        #[derive(diesel::Insertable, diesel::AsChangeset)]
        #[diesel(
            table_name = category_choices,
            primary_key(user_id, category_key),
            treat_none_as_null = true,
            treat_none_as_default_value = false
        )]
        $vis struct ChoiceValues<'a> {
            user_id: $id,
            category_key: &'a str,
            email: Option<bool>,
            push: Option<bool>,
            updated_at: ::time::OffsetDateTime,
        }

        impl<'a> ChoiceValues<'a> {
            /// The row that stores `user`'s `choice` in the category `key`, made at `now`.
            $vis fn new(
                user: ::domain::user::UserId,
                key: &'a ::domain::category::CategoryKey,
                choice: ::domain::category::CategoryChoice,
                now: ::time::OffsetDateTime,
            ) -> Self {
                let ::domain::category::CategoryChoice { email, push } = choice;
                Self { user_id: <$id>::from(user.as_uuid()), category_key: key.as_str(), email, push, updated_at: now }
            }
        }
    };
}
