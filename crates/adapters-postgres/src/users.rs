//! [`UserRepository`] on PostgreSQL.

use adapters_sql_common::device_order;
use adapters_sql_common::profiles::{
    InitialDevice, created_user, page_offset, page_total, profiles_from_joined_rows, profiles_with_devices, uuids,
};
use async_trait::async_trait;
use diesel::dsl::{exists, sql};
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::auth::Credentials;
use domain::device::HeldToken;
use domain::idempotency::{Idempotent, IdempotentWrite};
use domain::ports::{CreatedUser, NewUserRecord, RepositoryError, UserRepository};
use domain::preferences::{Preferences, PreferencesUpdate};
use domain::user::{ContactUpdate, EmailAddress, Page, PageRequest, PasswordHash, User, UserId, UserProfile};
use time::OffsetDateTime;

use crate::PgStore;
use crate::devices::{insert_device_if_new, upsert_device};
use crate::errors::from_diesel;
use crate::idempotency::{TxError, idempotent_transaction};
use crate::rows::{
    CREDENTIALS, ContactChangeset, CredentialsRow, DEVICE, DeviceRow, NewUserValues, PREFERENCES, PreferencesChangeset,
    PreferencesRow, PreferencesValues, USER, UserRow,
};
use crate::schema::{devices, lower, notification_preferences, users};

/// Inserts the user, its preferences and its optional device (in the caller's transaction).
async fn insert_user(connection: &mut AsyncPgConnection, record: &NewUserRecord) -> Result<CreatedUser, TxError> {
    let user = diesel::insert_into(users::table)
        .values(NewUserValues::new(record))
        .returning(USER)
        .get_result(connection)
        .await?;
    let preferences = diesel::insert_into(notification_preferences::table)
        .values(PreferencesValues::new(record.id, &record.preferences))
        .returning(PREFERENCES)
        .get_result::<PreferencesRow>(connection)
        .await?;
    let device = match (&record.device, record.if_token_held) {
        (None, _) => InitialDevice::None,
        (Some(registration), HeldToken::Move) => {
            InitialDevice::Registered(upsert_device(connection, record.id, registration, record.created_at).await?)
        }
        (Some(registration), HeldToken::Leave) => {
            match insert_device_if_new(connection, record.id, registration, record.created_at).await? {
                Some(row) => InitialDevice::Registered(row),
                None => InitialDevice::LeftWithItsOwner,
            }
        }
    };
    created_user(user, preferences, device).map_err(TxError::Repository)
}

#[async_trait]
impl UserRepository for PgStore {
    async fn create(
        &self,
        record: NewUserRecord,
        idempotency: Option<IdempotentWrite<CreatedUser>>,
    ) -> Result<Idempotent<CreatedUser>, RepositoryError> {
        let mut connection = self.connection().await?;
        idempotent_transaction(&mut connection, idempotency, move |connection| {
            Box::pin(async move { insert_user(connection, &record).await })
        })
        .await
    }

    async fn find_profile(&self, id: UserId) -> Result<Option<UserProfile>, RepositoryError> {
        Ok(self.find_profiles(&[id]).await?.pop())
    }

    async fn find_profiles(&self, ids: &[UserId]) -> Result<Vec<UserProfile>, RepositoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = uuids(ids);
        let mut connection = self.connection().await?;
        // One round trip: a user and its preferences repeat on each of its device rows (few
        // per user), and the rows of one user are adjacent thanks to the order.
        let rows: Vec<(UserRow, PreferencesRow, Option<DeviceRow>)> = users::table
            .inner_join(notification_preferences::table)
            .left_join(devices::table)
            .filter(users::id.eq_any(&ids))
            .order(users::id)
            .then_order_by(device_order!())
            .select((USER, PREFERENCES, DEVICE.nullable()))
            .load(&mut connection)
            .await
            .map_err(from_diesel)?;
        profiles_from_joined_rows(rows)
    }

    async fn list_profiles(&self, page: PageRequest) -> Result<Page<UserProfile>, RepositoryError> {
        let mut connection = self.connection().await?;
        // The window count gives the total with the page; an empty page needs its own count.
        let rows: Vec<(UserRow, PreferencesRow, i64)> = users::table
            .inner_join(notification_preferences::table)
            .order((users::created_at.asc(), users::id.asc()))
            .limit(i64::from(page.limit()))
            .offset(page_offset(page))
            .select((USER, PREFERENCES, sql::<BigInt>("count(*) OVER ()")))
            .load(&mut connection)
            .await
            .map_err(from_diesel)?;
        let total = match rows.as_slice().first() {
            Some((_, _, total)) => *total,
            None => users::table.count().get_result(&mut connection).await.map_err(from_diesel)?,
        };
        let ids: Vec<_> = rows.iter().map(|(user, _, _)| user.id).collect();
        let devices: Vec<DeviceRow> = if ids.is_empty() {
            Vec::new()
        } else {
            devices::table
                .filter(devices::user_id.eq_any(&ids))
                .order(device_order!())
                .select(DEVICE)
                .load(&mut connection)
                .await
                .map_err(from_diesel)?
        };
        let users = rows.into_iter().map(|(user, preferences, _)| (user, preferences));
        Ok(Page { items: profiles_with_devices(users, devices)?, total: page_total(total) })
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
        let row = diesel::update(users::table.find(id.as_uuid()))
            .set(ContactChangeset::new(&update, now))
            .returning(USER)
            .get_result::<UserRow>(&mut connection)
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
            .select(PREFERENCES)
            .get_result::<PreferencesRow>(&mut connection)
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
        let row = diesel::update(notification_preferences::table.find(id.as_uuid()))
            .set(PreferencesChangeset::new(&update, now))
            .returning(PREFERENCES)
            .get_result::<PreferencesRow>(&mut connection)
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
            .select(CREDENTIALS)
            .get_result::<CredentialsRow>(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)?;
        Ok(row.map(Credentials::from))
    }

    async fn credentials_of(&self, id: UserId) -> Result<Option<Credentials>, RepositoryError> {
        let mut connection = self.connection().await?;
        let row = users::table
            .find(id.as_uuid())
            .select(CREDENTIALS)
            .get_result::<CredentialsRow>(&mut connection)
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

    async fn replace_password_hash(
        &self,
        id: UserId,
        current: PasswordHash,
        new: PasswordHash,
        revoke_tokens: bool,
    ) -> Result<Option<i32>, RepositoryError> {
        let mut connection = self.connection().await?;
        let bump = i32::from(revoke_tokens);
        diesel::update(users::table.find(id.as_uuid()).filter(users::password_hash.eq(current.as_str())))
            .set((users::password_hash.eq(new.as_str()), users::token_version.eq(users::token_version + bump)))
            .returning(users::token_version)
            .get_result(&mut connection)
            .await
            .optional()
            .map_err(from_diesel)
    }
}
