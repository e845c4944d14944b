//! What both stores write: a new user, a contact change, a preferences row and a partial
//! preferences change, each built from its domain value by exhaustive destructuring, so that
//! a field added to the domain value does not build until it is written here.

/// Declares the shared write structs with the visibility given: `NewUserValues` and
/// `ContactChangeset` (table `users`), `PreferencesValues` and `PreferencesChangeset` (table
/// `notification_preferences`). `$id` is the store's type to bind a stored UUID
/// (`From<Uuid>`). Invoke it where the store's `users` and `notification_preferences` table
/// modules are in scope.
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
        /// A new user's row.
        #[derive(diesel::Insertable)]
        #[diesel(table_name = users)]
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
        #[diesel(table_name = notification_preferences)]
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
    };
}
