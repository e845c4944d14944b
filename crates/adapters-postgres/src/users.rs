//! [`UserRepository`] on PostgreSQL.

use adapters_sql_common::events::created_user_events;
use adapters_sql_common::profiles::{
    InitialDevice, ProfileRow, created_user, page_offset, page_total, profile_from_rows_of_one_user,
    profiles_from_joined_rows, profiles_with_devices, uuids,
};
use adapters_sql_common::writes::history_entries;
use adapters_sql_common::{device_order, profile_query};
use async_trait::async_trait;
use diesel::dsl::{exists, sql};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Time as SqlTime, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::auth::Credentials;
use domain::cache::CommitPosition;
use domain::consent::{Provenance, contact_changes};
use domain::device::HeldToken;
use domain::event::NewEvent;
use domain::idempotency::{Idempotent, IdempotentWrite};
use domain::ports::{CreatedUser, NewUserRecord, RepositoryError, UserRepository};
use domain::preferences::{Preferences, PreferencesUpdate};
use domain::user::{ContactUpdate, EmailAddress, Page, PageRequest, PasswordHash, User, UserId, UserProfile};
use time::{OffsetDateTime, Time};
use uuid::Uuid;

use crate::devices::{insert_device_if_new, upsert_device};
use crate::documents::{READ_DOCUMENT, StoredDocument};
use crate::history::{append, lock_and_append, lock_consent};
use crate::idempotency::TxError;
use crate::outbox;
use crate::prepared::{kept_prepared, prepared};
use crate::rows::{
    CHOICE, CREDENTIALS, ChoiceRow, ContactChangeset, CredentialsRow, DEVICE, DeviceRow, NewUserValues, PREFERENCES,
    PreferencesRow, PreferencesValues, USER, UserRow,
};
use crate::schema::{category_choices, devices, lower, notification_preferences, users};
use crate::work::Unit;
use crate::{PgStore, RecordedAt};

/// Inserts the user, its preferences and its optional device, with the registration's
/// consent history (in the caller's transaction).
async fn insert_user(
    connection: &mut AsyncPgConnection,
    record: &NewUserRecord,
    recorded_at: RecordedAt,
) -> Result<CreatedUser, TxError> {
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
    let (created, history) =
        created_user(user, preferences, device, &record.provenance).map_err(TxError::Repository)?;
    // The new user's rows are its own until the commit; a previous owner of the device is
    // locked like any other write of its consent.
    if let Some(previous_owner) = created.device_moved_from {
        lock_consent(connection, &[previous_owner.as_uuid()]).await?;
    }
    append(connection, history, recorded_at).await?;
    outbox::append(connection, created_user_events(&created), recorded_at).await?;
    Ok(created)
}

/// The rows of the profiles of `ids`: each user with its preferences, once per device, and
/// their category choices.
pub(crate) async fn load_profile_rows(
    connection: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> Result<(Vec<(UserRow, PreferencesRow, Option<DeviceRow>)>, Vec<ChoiceRow>), diesel::result::Error> {
    let connection: &AsyncPgConnection = connection;
    // A user and its preferences repeat on each of its device rows (few per user), and the
    // rows of one user are adjacent thanks to the order. The choices are a second statement,
    // pipelined with the first: one round trip for both.
    let rows = users::table
        .inner_join(notification_preferences::table)
        .left_join(devices::table)
        .filter(users::id.eq_any(ids))
        .order(users::id)
        .then_order_by(device_order!())
        .select((USER, PREFERENCES, DEVICE.nullable()))
        .load::<(UserRow, PreferencesRow, Option<DeviceRow>)>(&mut &*connection);
    let choices = category_choices::table
        .filter(category_choices::user_id.eq_any(ids))
        .select(CHOICE)
        .load::<ChoiceRow>(&mut &*connection);
    futures_util::future::try_join(rows, choices).await
}

/// Changes the preferences and appends each changed field to the consent history, in one
/// call of the function `update_preferences_recorded` (see its migration): one round trip, no
/// `BEGIN`/`COMMIT`, the statement kept [`prepared`] and the function's own plans cached by
/// PostgreSQL, for the write the platform makes most.
/// The row is the preferences after the change; none when the user does not exist.
const UPDATE_PREFERENCES: &str = "SELECT user_id, email_enabled, push_enabled, quiet_hours_start, quiet_hours_end, \
    timezone, updated_at FROM update_preferences_recorded($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

/// A row of [`UPDATE_PREFERENCES`]: the preferences after the change.
#[derive(QueryableByName)]
struct UpdatedPreferences {
    #[diesel(sql_type = SqlUuid)]
    user_id: Uuid,
    #[diesel(sql_type = Bool)]
    email_enabled: bool,
    #[diesel(sql_type = Bool)]
    push_enabled: bool,
    #[diesel(sql_type = Nullable<SqlTime>)]
    quiet_hours_start: Option<Time>,
    #[diesel(sql_type = Nullable<SqlTime>)]
    quiet_hours_end: Option<Time>,
    #[diesel(sql_type = Text)]
    timezone: String,
    #[diesel(sql_type = Timestamptz)]
    updated_at: OffsetDateTime,
}

impl From<UpdatedPreferences> for PreferencesRow {
    fn from(row: UpdatedPreferences) -> Self {
        let UpdatedPreferences {
            user_id,
            email_enabled,
            push_enabled,
            quiet_hours_start,
            quiet_hours_end,
            timezone,
            updated_at,
        } = row;
        Self { user_id, email_enabled, push_enabled, quiet_hours_start, quiet_hours_end, timezone, updated_at }
    }
}

#[async_trait]
impl UserRepository for PgStore {
    async fn create(
        &self,
        record: NewUserRecord,
        idempotency: Option<IdempotentWrite<CreatedUser>>,
    ) -> Result<Idempotent<CreatedUser>, RepositoryError> {
        let recorded_at = self.recorded_at(record.created_at);
        self.idempotent_transaction(idempotency, move |connection| {
            Box::pin(async move { insert_user(connection, &record, recorded_at).await })
        })
        .await
    }

    /// One user in one statement: the row of its profile document (see [`crate::documents`]),
    /// or, when it has none (an unknown user), the join ([`profile_query!`]), with `= $1`
    /// rather than [`UserRepository::find_profiles`]' `= ANY($1)`: with an array parameter
    /// PostgreSQL never settles on a generic plan (it costs a generic plan as if the array
    /// held 10 ids) and plans again at every call, about three times what the statement
    /// takes to run; with a scalar one it caches the plan.
    async fn find_profile(&self, id: UserId) -> Result<Option<UserProfile>, RepositoryError> {
        let read_document = prepared(READ_DOCUMENT, |query| query.bind::<SqlUuid, _>(id.as_uuid()));
        let document = self
            .run(Unit::Statements, async |connection| {
                read_document.get_result::<StoredDocument>(connection).await.optional()
            })
            .await?;
        if let Some(document) = document {
            return document.into_profile().map(Some);
        }
        // An unknown user, or one without a document (yet): the join says which.
        let rows = self
            .run(Unit::Statements, async |connection| profile_query!(id.as_uuid()).load::<ProfileRow>(connection).await)
            .await?;
        profile_from_rows_of_one_user(rows)
    }

    async fn find_profiles(&self, ids: &[UserId]) -> Result<Vec<UserProfile>, RepositoryError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = uuids(ids);
        let (rows, choices) =
            self.run(Unit::Statements, async |connection| load_profile_rows(connection, &ids).await).await?;
        profiles_from_joined_rows(rows, choices)
    }

    async fn find_profiles_at_least(
        &self,
        wanted: &[(UserId, CommitPosition)],
    ) -> Result<Vec<UserProfile>, RepositoryError> {
        let (mut found, for_the_primary) = match &self.replica {
            Some(replica) => replica.load_profiles(wanted).await,
            None => (Vec::new(), wanted.iter().map(|(id, _)| *id).collect()),
        };
        if !for_the_primary.is_empty() {
            found.extend(self.find_profiles(&for_the_primary).await?);
        }
        Ok(found)
    }

    async fn list_profiles(&self, page: PageRequest) -> Result<Page<UserProfile>, RepositoryError> {
        // One unit of work: behind a transaction pooler, one transaction, so that its
        // statements stay on one server connection.
        let (rows, total, devices, choices) = self
            .run(Unit::Statements, async |connection| {
                // The window count gives the total with the page; an empty page needs its own
                // count.
                let rows: Vec<(UserRow, PreferencesRow, i64)> = users::table
                    .inner_join(notification_preferences::table)
                    .order((users::created_at.asc(), users::id.asc()))
                    .limit(i64::from(page.limit()))
                    .offset(page_offset(page))
                    .select((USER, PREFERENCES, sql::<BigInt>("count(*) OVER ()")))
                    .load(connection)
                    .await?;
                let total = match rows.as_slice().first() {
                    Some((_, _, total)) => *total,
                    None => users::table.count().get_result(connection).await?,
                };
                let ids: Vec<_> = rows.iter().map(|(user, _, _)| user.id).collect();
                if ids.is_empty() {
                    return Ok((rows, total, Vec::new(), Vec::new()));
                }
                let connection: &AsyncPgConnection = connection;
                // Pipelined: one round trip for both.
                let devices = devices::table
                    .filter(devices::user_id.eq_any(&ids))
                    .order(device_order!())
                    .select(DEVICE)
                    .load::<DeviceRow>(&mut &*connection);
                let choices = category_choices::table
                    .filter(category_choices::user_id.eq_any(&ids))
                    .select(CHOICE)
                    .load::<ChoiceRow>(&mut &*connection);
                let (devices, choices) = futures_util::future::try_join(devices, choices).await?;
                Ok::<_, diesel::result::Error>((rows, total, devices, choices))
            })
            .await?;
        let users = rows.into_iter().map(|(user, preferences, _)| (user, preferences));
        Ok(Page { items: profiles_with_devices(users, devices, choices)?, total: page_total(total) })
    }

    async fn exists(&self, id: UserId) -> Result<bool, RepositoryError> {
        self.run(Unit::Statements, async |connection| {
            diesel::select(exists(users::table.find(id.as_uuid()))).get_result(connection).await
        })
        .await
    }

    async fn update_contact(
        &self,
        id: UserId,
        update: ContactUpdate,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<User>, RepositoryError> {
        let (by, recorded_at) = (by.clone(), self.recorded_at(now));
        let outcome = self
            .run::<_, TxError, _>(Unit::Transaction, async |connection| {
                // The user's row first, then its consent lock: the order in which erasing a
                // user locks them (users, then the cascade), so that the two never deadlock.
                let old: Option<UserRow> = users::table
                    .find(id.as_uuid())
                    .select(USER)
                    .for_no_key_update()
                    .get_result(connection)
                    .await
                    .optional()?;
                let Some(old) = old else { return Ok(None) };
                let new: UserRow = kept_prepared(
                    diesel::update(users::table.find(id.as_uuid()))
                        .set(ContactChangeset::new(&update, now))
                        .returning(USER),
                )
                .get_result(connection)
                .await?;
                let old = User::try_from(old).map_err(TxError::Repository)?;
                let new = User::try_from(new).map_err(TxError::Repository)?;
                let history = history_entries(id, contact_changes(&old, &new), &by);
                lock_and_append(connection, history, recorded_at).await?;
                if old.name != new.name || old.email != new.email || old.phone != new.phone {
                    outbox::append(connection, vec![NewEvent::user_updated(&new)], recorded_at).await?;
                }
                Ok(Some(new))
            })
            .await?;
        Ok(outcome)
    }

    async fn delete(&self, id: UserId) -> Result<bool, RepositoryError> {
        let deleted = self
            .run::<_, TxError, _>(Unit::Transaction, async |connection| {
                // What the delete erases is locked first, in the order of the other writes (the
                // cascade locks the preferences, the consent lock, before the devices): the
                // user's row, as `update_contact` and a device registration for the user do;
                // then, with no device able to join the user any more, in a statement whose
                // snapshot sees every device that did, its devices in id order, as every write
                // that locks several devices, and before the consent locks, as every device write.
                let user: Option<Uuid> = users::table
                    .find(id.as_uuid())
                    .select(users::id)
                    .for_update()
                    .get_result(connection)
                    .await
                    .optional()?;
                if user.is_none() {
                    return Ok(0);
                }
                devices::table
                    .filter(devices::user_id.eq(id.as_uuid()))
                    .order(devices::id)
                    .select(devices::id)
                    .for_update()
                    .execute(connection)
                    .await?;
                // Preferences, devices, choices and history go with the user (ON DELETE CASCADE).
                let deleted = diesel::delete(users::table.find(id.as_uuid())).execute(connection).await?;
                // The port gives no instant: the database's clock stamps the event.
                outbox::append(connection, vec![NewEvent::user_erased(id)], None).await?;
                Ok(deleted)
            })
            .await?;
        Ok(deleted > 0)
    }

    async fn update_preferences(
        &self,
        id: UserId,
        update: PreferencesUpdate,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<Preferences>, RepositoryError> {
        let PreferencesUpdate { email, push, quiet_hours, timezone } = &update;
        let window = quiet_hours.flatten();
        let actor = by.actor_for(id);
        let recorded_at = self.recorded_at(now);
        let update_row = prepared(UPDATE_PREFERENCES, |query| {
            query
                .bind::<SqlUuid, _>(id.as_uuid())
                .bind::<Nullable<Bool>, _>(*email)
                .bind::<Nullable<Bool>, _>(*push)
                .bind::<Bool, _>(quiet_hours.is_some())
                .bind::<Nullable<SqlTime>, _>(window.map(|window| window.start().as_time()))
                .bind::<Nullable<SqlTime>, _>(window.map(|window| window.end().as_time()))
                .bind::<Nullable<Text>, _>(timezone.as_ref().map(|zone| zone.as_str()))
                .bind::<Timestamptz, _>(now)
                .bind::<Nullable<Timestamptz>, _>(recorded_at)
                .bind::<Text, _>(actor.kind.as_str())
                .bind::<Text, _>(&actor.name)
                .bind::<Nullable<Text>, _>(by.request_id.as_deref())
                .bind::<SqlUuid, _>(Uuid::now_v7())
        });
        let row: Option<UpdatedPreferences> =
            // Read to the end: see `Unit::Statements`.
            self.run(Unit::Statements, async |connection| {
                update_row.get_results(connection).await.map(|rows| rows.into_iter().next())
            })
            .await?;
        row.map(|row| Preferences::try_from(PreferencesRow::from(row))).transpose()
    }

    async fn find_credentials(&self, email: &EmailAddress) -> Result<Option<Credentials>, RepositoryError> {
        // Matches the case-insensitive unique index on lower(email).
        let row = self
            .run(Unit::Statements, async |connection| {
                users::table
                    .filter(lower(users::email).eq(lower(email.as_str())))
                    .select(CREDENTIALS)
                    .get_result::<CredentialsRow>(connection)
                    .await
                    .optional()
            })
            .await?;
        Ok(row.map(Credentials::from))
    }

    async fn credentials_of(&self, id: UserId) -> Result<Option<Credentials>, RepositoryError> {
        let row = self
            .run(Unit::Statements, async |connection| {
                users::table
                    .find(id.as_uuid())
                    .select(CREDENTIALS)
                    .get_result::<CredentialsRow>(connection)
                    .await
                    .optional()
            })
            .await?;
        Ok(row.map(Credentials::from))
    }

    async fn token_version(&self, id: UserId) -> Result<Option<i32>, RepositoryError> {
        self.run(Unit::Statements, async |connection| {
            users::table.find(id.as_uuid()).select(users::token_version).get_result(connection).await.optional()
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
        let bump = i32::from(revoke_tokens);
        self.run(Unit::Statements, async |connection| {
            kept_prepared(
                diesel::update(users::table.find(id.as_uuid()).filter(users::password_hash.eq(current.as_str())))
                    .set((users::password_hash.eq(new.as_str()), users::token_version.eq(users::token_version + bump)))
                    .returning(users::token_version),
            )
            // Read to the end: see `Unit::Statements`.
            .get_results(connection)
            .await
            .map(|rows| rows.into_iter().next())
        })
        .await
    }
}
