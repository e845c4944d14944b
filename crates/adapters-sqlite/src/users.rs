//! [`UserRepository`] on SQLite.

use adapters_sql_common::events::created_user_events;
use adapters_sql_common::profiles::{
    InitialDevice, ProfileRow, created_user, page_offset, page_total, profile_from_rows_of_one_user,
    profiles_with_devices, uuids,
};
use adapters_sql_common::rows::{ChoiceRow, CredentialsRow, DeviceRow, PreferencesRow, UserRow};
use adapters_sql_common::writes::history_entries;
use adapters_sql_common::{device_order, profile_query};
use async_trait::async_trait;
use diesel::dsl::exists;
use diesel::prelude::*;
use domain::auth::Credentials;
use domain::consent::{Provenance, contact_changes, preferences_changes};
use domain::device::HeldToken;
use domain::event::NewEvent;
use domain::idempotency::{Idempotent, IdempotentWrite};
use domain::ports::{Clock, CreatedUser, NewUserRecord, RepositoryError, SystemClock, UserRepository};
use domain::preferences::{Preferences, PreferencesUpdate};
use domain::user::{ContactUpdate, EmailAddress, Page, PageRequest, PasswordHash, User, UserId, UserProfile};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::devices::{token_is_held, upsert_device};
use crate::errors::StoreError;
use crate::history::append;
use crate::idempotency::idempotently;
use crate::outbox;
use crate::schema::{
    CHOICE, CREDENTIALS, ContactChangeset, DEVICE, IDS_PER_QUERY, Id, NewUserValues, PREFERENCES, PreferencesChangeset,
    PreferencesValues, USER, category_choices, devices, lower, notification_preferences, user_exists, users,
};

/// Whether a user other than `except` has `email`, compared as the unique index compares.
fn email_taken(connection: &mut SqliteConnection, email: &str, except: Option<UserId>) -> QueryResult<bool> {
    let mut holders = users::table.filter(lower(users::email).eq(lower(email))).into_boxed();
    if let Some(except) = except {
        holders = holders.filter(users::id.ne(Id::from(except)));
    }
    diesel::select(exists(holders)).get_result(connection)
}

/// Inserts the user, its preferences and its optional device (in the caller's transaction).
fn insert_user(connection: &mut SqliteConnection, record: &NewUserRecord) -> Result<CreatedUser, StoreError> {
    if email_taken(connection, record.email.as_str(), None)? {
        return Err(RepositoryError::EmailTaken.into());
    }
    let user: UserRow =
        diesel::insert_into(users::table).values(NewUserValues::new(record)).returning(USER).get_result(connection)?;
    let preferences: PreferencesRow = diesel::insert_into(notification_preferences::table)
        .values(PreferencesValues::new(record.id, &record.preferences))
        .returning(PREFERENCES)
        .get_result(connection)?;
    let device = match (&record.device, record.if_token_held) {
        (None, _) => InitialDevice::None,
        // Write transactions are serialized: the token read here is still unheld at the insert.
        (Some(registration), HeldToken::Leave) if token_is_held(connection, registration)? => {
            InitialDevice::LeftWithItsOwner
        }
        (Some(registration), _) => {
            InitialDevice::Registered(upsert_device(connection, record.id, registration, record.created_at)?)
        }
    };
    let (created, history) = created_user(user, preferences, device, &record.provenance)?;
    append(connection, history, record.created_at)?;
    outbox::append(connection, created_user_events(&created), record.created_at)?;
    Ok(created)
}

/// The profiles of users already loaded with their preferences (in their order), with
/// their devices and category choices.
fn with_devices(
    connection: &mut SqliteConnection,
    users: Vec<(UserRow, PreferencesRow)>,
) -> Result<Vec<UserProfile>, StoreError> {
    let ids: Vec<Id> = users.iter().map(|(user, _)| Id(user.id)).collect();
    let (devices, choices): (Vec<DeviceRow>, Vec<ChoiceRow>) = if ids.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let devices = devices::table
            .filter(devices::user_id.eq_any(&ids))
            .order(device_order!())
            .select(DEVICE)
            .load(connection)?;
        let choices =
            category_choices::table.filter(category_choices::user_id.eq_any(&ids)).select(CHOICE).load(connection)?;
        (devices, choices)
    };
    Ok(profiles_with_devices(users, devices, choices)?)
}

/// Loads the profiles of `ids` in one snapshot.
fn load_profiles(connection: &mut SqliteConnection, ids: &[Uuid]) -> Result<Vec<UserProfile>, StoreError> {
    connection.transaction(|connection| {
        let mut profiles = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let users = users::table
                .inner_join(notification_preferences::table)
                .filter(users::id.eq_any(chunk.iter().copied().map(Id)))
                .select((USER, PREFERENCES))
                .load(connection)?;
            profiles.extend(with_devices(connection, users)?);
        }
        Ok(profiles)
    })
}

#[async_trait]
impl UserRepository for SqliteStore {
    async fn create(
        &self,
        record: NewUserRecord,
        idempotency: Option<IdempotentWrite<CreatedUser>>,
    ) -> Result<Idempotent<CreatedUser>, RepositoryError> {
        self.write(move |connection| {
            idempotently(connection, idempotency, |connection| insert_user(connection, &record))
        })
        .await
    }

    /// One statement ([`profile_query!`]), which reads one snapshot without a transaction.
    async fn find_profile(&self, id: UserId) -> Result<Option<UserProfile>, RepositoryError> {
        self.read(move |connection| {
            let rows = profile_query!(Id::from(id)).load::<ProfileRow>(connection)?;
            Ok(profile_from_rows_of_one_user(rows)?)
        })
        .await
    }

    async fn find_profiles(&self, ids: &[UserId]) -> Result<Vec<UserProfile>, RepositoryError> {
        let ids = uuids(ids);
        self.read(move |connection| load_profiles(connection, &ids)).await
    }

    async fn list_profiles(&self, page: PageRequest) -> Result<Page<UserProfile>, RepositoryError> {
        self.read(move |connection| {
            connection.transaction(|connection| {
                let total: i64 = users::table.count().get_result(connection)?;
                let users = users::table
                    .inner_join(notification_preferences::table)
                    .order((users::created_at.asc(), users::id.asc()))
                    .limit(i64::from(page.limit()))
                    .offset(page_offset(page))
                    .select((USER, PREFERENCES))
                    .load(connection)?;
                Ok(Page { items: with_devices(connection, users)?, total: page_total(total) })
            })
        })
        .await
    }

    async fn exists(&self, id: UserId) -> Result<bool, RepositoryError> {
        self.read(move |connection| Ok(user_exists(connection, id)?)).await
    }

    async fn update_contact(
        &self,
        id: UserId,
        update: ContactUpdate,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<User>, RepositoryError> {
        let by = by.clone();
        self.write(move |connection| {
            let old: Option<UserRow> =
                users::table.find(Id::from(id)).select(USER).get_result(connection).optional()?;
            let Some(old) = old else { return Ok(None) };
            if let Some(email) = &update.email
                && email_taken(connection, email.as_str(), Some(id))?
            {
                return Err(RepositoryError::EmailTaken.into());
            }
            let new: UserRow = diesel::update(users::table.find(Id::from(id)))
                .set(ContactChangeset::new(&update, now))
                .returning(USER)
                .get_result(connection)?;
            let (old, new) = (User::try_from(old)?, User::try_from(new)?);
            append(connection, history_entries(id, contact_changes(&old, &new), &by), now)?;
            if old.name != new.name || old.email != new.email || old.phone != new.phone {
                outbox::append(connection, vec![NewEvent::user_updated(&new)], now)?;
            }
            Ok(Some(new))
        })
        .await
    }

    async fn delete(&self, id: UserId) -> Result<bool, RepositoryError> {
        // Preferences and devices go with the user (ON DELETE CASCADE, foreign keys on).
        self.write(move |connection| {
            let deleted = diesel::delete(users::table.find(Id::from(id))).execute(connection)? > 0;
            if deleted {
                // The port gives no instant: the system clock stamps the event.
                outbox::append(connection, vec![NewEvent::user_erased(id)], SystemClock.now())?;
            }
            Ok(deleted)
        })
        .await
    }

    async fn update_preferences(
        &self,
        id: UserId,
        update: PreferencesUpdate,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<Preferences>, RepositoryError> {
        let by = by.clone();
        self.write(move |connection| {
            let preferences = notification_preferences::table.find(Id::from(id));
            let old: Option<PreferencesRow> = preferences.select(PREFERENCES).get_result(connection).optional()?;
            let Some(old) = old else { return Ok(None) };
            let new: PreferencesRow = diesel::update(preferences)
                .set(PreferencesChangeset::new(&update, now))
                .returning(PREFERENCES)
                .get_result(connection)?;
            let (old, new) = (Preferences::try_from(old)?, Preferences::try_from(new)?);
            let changes = preferences_changes(&old, &new);
            if !changes.is_empty() {
                append(connection, history_entries(id, changes, &by), now)?;
                outbox::append(connection, vec![NewEvent::preferences_changed(id, &new)], now)?;
            }
            Ok(Some(new))
        })
        .await
    }

    async fn find_credentials(&self, email: &EmailAddress) -> Result<Option<Credentials>, RepositoryError> {
        let email = email.as_str().to_owned();
        self.read(move |connection| {
            // Matches the unique index on lower(email).
            let row: Option<CredentialsRow> = users::table
                .filter(lower(users::email).eq(lower(email)))
                .select(CREDENTIALS)
                .get_result(connection)
                .optional()?;
            Ok(row.map(Credentials::from))
        })
        .await
    }

    async fn credentials_of(&self, id: UserId) -> Result<Option<Credentials>, RepositoryError> {
        self.read(move |connection| {
            let row: Option<CredentialsRow> =
                users::table.find(Id::from(id)).select(CREDENTIALS).get_result(connection).optional()?;
            Ok(row.map(Credentials::from))
        })
        .await
    }

    async fn token_version(&self, id: UserId) -> Result<Option<i32>, RepositoryError> {
        self.read(move |connection| {
            Ok(users::table.find(Id::from(id)).select(users::token_version).get_result(connection).optional()?)
        })
        .await
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        current: PasswordHash,
        new: PasswordHash,
        revoke_tokens: bool,
    ) -> Result<Option<i32>, RepositoryError> {
        self.write(move |connection| {
            let bump = i32::from(revoke_tokens);
            Ok(diesel::update(users::table.find(Id::from(id)).filter(users::password_hash.eq(current.as_str())))
                .set((users::password_hash.eq(new.as_str()), users::token_version.eq(users::token_version + bump)))
                .returning(users::token_version)
                .get_result(connection)
                .optional()?)
        })
        .await
    }
}
