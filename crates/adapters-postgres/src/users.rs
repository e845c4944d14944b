//! [`UserRepository`] on PostgreSQL.

use std::collections::HashMap;

use async_trait::async_trait;
use diesel::dsl::{exists, sql};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use domain::auth::Credentials;
use domain::idempotency::{Idempotent, IdempotentWrite};
use domain::ports::{CreatedUser, NewUserRecord, RepositoryError, UserRepository};
use domain::preferences::{Preferences, PreferencesUpdate};
use domain::user::{ContactUpdate, EmailAddress, Page, PageRequest, PasswordHash, User, UserId, UserProfile};
use time::{OffsetDateTime, Time};
use uuid::Uuid;

use crate::PgStore;
use crate::devices::upsert_device;
use crate::errors::from_diesel;
use crate::idempotency::{TxError, claim, record as record_answer};
use crate::rows::{DeviceRow, PreferencesRow, UserRow, devices_from_rows};
use crate::schema::{devices, lower, notification_preferences, users};

/// What login reads of a user.
#[derive(Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
struct CredentialsRow {
    id: Uuid,
    password_hash: String,
    token_version: i32,
}

impl From<CredentialsRow> for Credentials {
    fn from(row: CredentialsRow) -> Self {
        Self {
            user_id: row.id.into(),
            password_hash: PasswordHash::new(row.password_hash),
            token_version: row.token_version,
        }
    }
}

/// The order of a profile's devices: active first, most recently seen first.
macro_rules! device_order {
    () => {
        (devices::active.desc(), devices::last_seen_at.desc(), devices::id.desc())
    };
}
pub(crate) use device_order;

/// A partial update of `users`; `None` fields are left out of the `SET` list.
#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct ContactChangeset<'a> {
    name: Option<&'a str>,
    email: Option<&'a str>,
    phone: Option<Option<&'a str>>,
    updated_at: OffsetDateTime,
}

/// A partial update of `notification_preferences`, applied in one statement so that
/// concurrent updates of different fields both survive.
#[derive(AsChangeset)]
#[diesel(table_name = notification_preferences)]
struct PreferencesChangeset<'a> {
    email_enabled: Option<bool>,
    push_enabled: Option<bool>,
    quiet_hours_start: Option<Option<Time>>,
    quiet_hours_end: Option<Option<Time>>,
    timezone: Option<&'a str>,
    updated_at: OffsetDateTime,
}

fn profile_from_rows(
    user: UserRow,
    preferences: PreferencesRow,
    devices: impl IntoIterator<Item = DeviceRow>,
) -> Result<UserProfile, RepositoryError> {
    Ok(UserProfile {
        user: User::try_from(user)?,
        preferences: Preferences::try_from(preferences)?,
        devices: devices_from_rows(devices)?,
    })
}

/// Inserts the user, its preferences and its optional device (in the caller's transaction).
async fn insert_user(connection: &mut AsyncPgConnection, record: &NewUserRecord) -> Result<CreatedUser, TxError> {
    let user = diesel::insert_into(users::table)
        .values((
            users::id.eq(record.id.as_uuid()),
            users::name.eq(record.name.as_str()),
            users::email.eq(record.email.as_str()),
            users::phone.eq(record.phone.as_ref().map(|phone| phone.as_str())),
            users::password_hash.eq(record.password_hash.as_str()),
            users::created_at.eq(record.created_at),
            users::updated_at.eq(record.created_at),
        ))
        .returning(UserRow::as_returning())
        .get_result(connection)
        .await?;
    let preferences = diesel::insert_into(notification_preferences::table)
        .values(PreferencesRow::new(record.id.as_uuid(), &record.preferences))
        .returning(PreferencesRow::as_returning())
        .get_result(connection)
        .await?;
    let device = match &record.device {
        Some(registration) => Some(upsert_device(connection, record.id, registration, record.created_at).await?),
        None => None,
    };
    let device_moved_from =
        device.as_ref().and_then(|device| device.previous_owner).filter(|owner| *owner != user.id).map(UserId::from);
    let profile =
        profile_from_rows(user, preferences, device.map(|device| device.device)).map_err(TxError::Repository)?;
    Ok(CreatedUser { profile, device_moved_from })
}

#[async_trait]
impl UserRepository for PgStore {
    async fn create(
        &self,
        record: NewUserRecord,
        idempotency: Option<IdempotentWrite<CreatedUser>>,
    ) -> Result<Idempotent<CreatedUser>, RepositoryError> {
        let mut connection = self.connection().await?;
        let outcome = connection
            .transaction::<_, TxError, _>(async |connection| {
                if let Some(write) = &idempotency
                    && let Some(replay) = claim(connection, &write.request).await?
                {
                    return Ok(Idempotent::Replayed(replay));
                }
                let created = insert_user(connection, &record).await?;
                if let Some(write) = idempotency {
                    let response = (write.render)(&created);
                    record_answer(connection, &write.request, &response, record.created_at).await?;
                }
                Ok(Idempotent::Executed(created))
            })
            .await?;
        Ok(outcome)
    }

    async fn find_profile(&self, id: UserId) -> Result<Option<UserProfile>, RepositoryError> {
        let mut connection = self.connection().await?;
        // One round trip: the user and preferences repeat on each device row (few per user).
        let rows: Vec<(UserRow, PreferencesRow, Option<DeviceRow>)> = users::table
            .inner_join(notification_preferences::table)
            .left_join(devices::table)
            .filter(users::id.eq(id.as_uuid()))
            .order(device_order!())
            .select((UserRow::as_select(), PreferencesRow::as_select(), Option::<DeviceRow>::as_select()))
            .load(&mut connection)
            .await
            .map_err(from_diesel)?;
        let mut rows = rows.into_iter();
        let Some((user, preferences, first_device)) = rows.next() else {
            return Ok(None);
        };
        let devices = first_device.into_iter().chain(rows.filter_map(|(_, _, device)| device));
        profile_from_rows(user, preferences, devices).map(Some)
    }

    async fn find_profiles(&self, ids: &[UserId]) -> Result<Vec<UserProfile>, RepositoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = ids.iter().map(UserId::as_uuid).collect();
        let mut connection = self.connection().await?;
        // One round trip for all users; rows of one user are adjacent thanks to the order.
        let rows: Vec<(UserRow, PreferencesRow, Option<DeviceRow>)> = users::table
            .inner_join(notification_preferences::table)
            .left_join(devices::table)
            .filter(users::id.eq_any(&ids))
            .order((users::id, devices::active.desc(), devices::last_seen_at.desc(), devices::id.desc()))
            .select((UserRow::as_select(), PreferencesRow::as_select(), Option::<DeviceRow>::as_select()))
            .load(&mut connection)
            .await
            .map_err(from_diesel)?;
        let mut profiles = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while let Some((user, preferences, first_device)) = rows.next() {
            let mut devices: Vec<DeviceRow> = first_device.into_iter().collect();
            while let Some((_, _, device)) = rows.next_if(|(next, _, _)| next.id == user.id) {
                devices.extend(device);
            }
            profiles.push(profile_from_rows(user, preferences, devices)?);
        }
        Ok(profiles)
    }

    async fn list_profiles(&self, page: PageRequest) -> Result<Page<UserProfile>, RepositoryError> {
        let mut connection = self.connection().await?;
        let offset = i64::try_from(page.offset()).unwrap_or(i64::MAX);
        // The window count gives the total with the page; an empty page needs its own count.
        let rows: Vec<(UserRow, PreferencesRow, i64)> = users::table
            .inner_join(notification_preferences::table)
            .order((users::created_at.asc(), users::id.asc()))
            .limit(i64::from(page.limit()))
            .offset(offset)
            .select((UserRow::as_select(), PreferencesRow::as_select(), sql::<BigInt>("count(*) OVER ()")))
            .load(&mut connection)
            .await
            .map_err(from_diesel)?;
        let total = match rows.as_slice().first() {
            Some((_, _, total)) => *total,
            None => users::table.count().get_result(&mut connection).await.map_err(from_diesel)?,
        };
        let ids: Vec<Uuid> = rows.iter().map(|(user, _, _)| user.id).collect();
        let device_rows: Vec<DeviceRow> = if ids.is_empty() {
            Vec::new()
        } else {
            devices::table
                .filter(devices::user_id.eq_any(&ids))
                .order(device_order!())
                .select(DeviceRow::as_select())
                .load(&mut connection)
                .await
                .map_err(from_diesel)?
        };
        let mut devices_by_user: HashMap<Uuid, Vec<DeviceRow>> = HashMap::with_capacity(ids.len());
        for device in device_rows {
            devices_by_user.entry(device.user_id).or_default().push(device);
        }
        let items = rows
            .into_iter()
            .map(|(user, preferences, _)| {
                let devices = devices_by_user.remove(&user.id).unwrap_or_default();
                profile_from_rows(user, preferences, devices)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page { items, total: u64::try_from(total).unwrap_or_default() })
    }

    async fn exists(&self, id: UserId) -> Result<bool, RepositoryError> {
        let mut connection = self.connection().await?;
        diesel::select(exists(users::table.find(id.as_uuid()))).get_result(&mut connection).await.map_err(from_diesel)
    }

    async fn update_contact(
        &self,
        id: UserId,
        update: ContactUpdate,
        now: OffsetDateTime,
    ) -> Result<Option<User>, RepositoryError> {
        let mut connection = self.connection().await?;
        let changeset = ContactChangeset {
            name: update.name.as_ref().map(|name| name.as_str()),
            email: update.email.as_ref().map(|email| email.as_str()),
            phone: update.phone.as_ref().map(|phone| phone.as_ref().map(|phone| phone.as_str())),
            updated_at: now,
        };
        let row = diesel::update(users::table.find(id.as_uuid()))
            .set(changeset)
            .returning(UserRow::as_returning())
            .get_result(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)?;
        row.map(User::try_from).transpose()
    }

    async fn delete(&self, id: UserId) -> Result<bool, RepositoryError> {
        let mut connection = self.connection().await?;
        // Preferences and devices go with the user (ON DELETE CASCADE).
        let deleted =
            diesel::delete(users::table.find(id.as_uuid())).execute(&mut connection).await.map_err(from_diesel)?;
        Ok(deleted > 0)
    }

    async fn find_preferences(&self, id: UserId) -> Result<Option<Preferences>, RepositoryError> {
        let mut connection = self.connection().await?;
        let row = notification_preferences::table
            .find(id.as_uuid())
            .select(PreferencesRow::as_select())
            .get_result(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)?;
        row.map(Preferences::try_from).transpose()
    }

    async fn update_preferences(
        &self,
        id: UserId,
        update: PreferencesUpdate,
        now: OffsetDateTime,
    ) -> Result<Option<Preferences>, RepositoryError> {
        let mut connection = self.connection().await?;
        let quiet_hours = update.quiet_hours.map(|window| window.map(|window| (window.start(), window.end())));
        let changeset = PreferencesChangeset {
            email_enabled: update.email,
            push_enabled: update.push,
            quiet_hours_start: quiet_hours.map(|window| window.map(|(start, _)| start.as_time())),
            quiet_hours_end: quiet_hours.map(|window| window.map(|(_, end)| end.as_time())),
            timezone: update.timezone.as_ref().map(|zone| zone.as_str()),
            updated_at: now,
        };
        let row = diesel::update(notification_preferences::table.find(id.as_uuid()))
            .set(changeset)
            .returning(PreferencesRow::as_returning())
            .get_result(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)?;
        row.map(Preferences::try_from).transpose()
    }

    async fn find_credentials(&self, email: &EmailAddress) -> Result<Option<Credentials>, RepositoryError> {
        let mut connection = self.connection().await?;
        // Matches the case-insensitive unique index on lower(email).
        let row = users::table
            .filter(lower(users::email).eq(lower(email.as_str())))
            .select(CredentialsRow::as_select())
            .get_result(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)?;
        Ok(row.map(Credentials::from))
    }

    async fn credentials_of(&self, id: UserId) -> Result<Option<Credentials>, RepositoryError> {
        let mut connection = self.connection().await?;
        let row = users::table
            .find(id.as_uuid())
            .select(CredentialsRow::as_select())
            .get_result(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)?;
        Ok(row.map(Credentials::from))
    }

    async fn token_version(&self, id: UserId) -> Result<Option<i32>, RepositoryError> {
        let mut connection = self.connection().await?;
        users::table
            .find(id.as_uuid())
            .select(users::token_version)
            .get_result(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)
    }

    async fn update_password_hash(
        &self,
        id: UserId,
        hash: PasswordHash,
        revoke_tokens: bool,
    ) -> Result<Option<i32>, RepositoryError> {
        let mut connection = self.connection().await?;
        let bump = i32::from(revoke_tokens);
        diesel::update(users::table.find(id.as_uuid()))
            .set((users::password_hash.eq(hash.as_str()), users::token_version.eq(users::token_version + bump)))
            .returning(users::token_version)
            .get_result(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)
    }
}
