//! [`DeviceRepository`] on PostgreSQL.

use adapters_sql_common::devices::UpsertedRow;
use adapters_sql_common::events::{activation_events, deletion_events};
use adapters_sql_common::rows::devices_from_rows;
use adapters_sql_common::writes::history_entries;
use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::consent::{Provenance, device_change};
use domain::device::{Device, DeviceId, DeviceRegistration, DeviceSelector, RegisteredDevice};
use domain::idempotency::{Idempotent, IdempotentWrite};
use domain::ports::{DeviceRepository, RepositoryError};
use domain::user::UserId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::history::lock_and_append;
use crate::idempotency::TxError;
use crate::outbox;
use crate::prepared::{kept_prepared, prepared};
use crate::rows::{DEVICE, DeviceRow};
use crate::schema::{devices, regexp_replace, users};
use crate::work::Unit;
use crate::{PgStore, RecordedAt};
use adapters_sql_common::device_order;

/// Registers or moves a token in one statement, changing only a row it has locked: `old`
/// locks the token's row and reads its owner and state under the lock (`FOR UPDATE` in `READ
/// COMMITTED` reads the latest committed version of a row the snapshot sees), `moved`
/// updates that row, and only when there was none does `inserted` insert one. A row inserted
/// by a transaction that committed after the statement's snapshot is out of `old`'s sight:
/// `ON CONFLICT DO NOTHING` leaves it alone (after waiting for its commit) and the statement
/// returns no row, for [`upsert_device`] to run it again with a snapshot that sees it. (`ON
/// CONFLICT DO UPDATE` would take such a row over with its owner unknown: a move that neither
/// invalidates nor records the user it took the device from.)
///
/// Locks in the order of every write: the registering user's row (`FOR KEY SHARE`, what the
/// foreign key of a move takes anyway, but taken first: `old`'s filter on `owner`, always
/// true, is evaluated once before its scan, for that order alone), then the device, then (the
/// caller) the consent locks. A move that waited for the new owner's row while holding the
/// device would deadlock with the erasure of that user, which locks the user's row, then its
/// devices. An unknown user is still the foreign key's violation.
const UPSERT_DEVICE: &str = r#"
WITH owner AS (
    SELECT id FROM users WHERE id = $3 FOR KEY SHARE
),
old AS (
    SELECT id, user_id, active, platform FROM devices
    WHERE token_digest = device_token_digest($2) AND (SELECT count(*) FROM owner) <= 1
    FOR UPDATE
),
moved AS (
    UPDATE devices AS d SET user_id = $3, platform = $4, active = $5, updated_at = $6, last_seen_at = $6
    FROM old WHERE d.id = old.id
    RETURNING d.id, d.user_id, d.token, d.platform, d.active, d.created_at, d.updated_at, d.last_seen_at,
        false AS created, old.user_id AS previous_owner, old.active AS previous_active,
        old.platform AS previous_platform
),
inserted AS (
    INSERT INTO devices (id, user_id, token, platform, active, created_at, updated_at, last_seen_at)
    SELECT $1, $3, $2, $4, $5, $6, $6, $6 WHERE NOT EXISTS (SELECT FROM old)
    ON CONFLICT (token_digest) DO NOTHING
    RETURNING id, user_id, token, platform, active, created_at, updated_at, last_seen_at,
        true AS created, NULL::uuid AS previous_owner, NULL::boolean AS previous_active,
        NULL::text AS previous_platform
)
SELECT * FROM moved UNION ALL SELECT * FROM inserted
"#;

/// How many times [`UPSERT_DEVICE`] runs before giving up: each run that returns nothing saw
/// a concurrent write of the token commit (an insert, or a removal then an insert).
const UPSERT_ATTEMPTS: usize = 3;

/// Refreshes a token that `$2` already holds in the state `$4` on the platform `$3`: the
/// most frequent registration (an app that registers its token at every start), which
/// changes no consent and nothing a consumer of change events keeps, and so needs no
/// history, no event, nor a transaction. Reports as [`UPSERT_DEVICE`] does; no row when the
/// registration is anything else.
const REFRESH_DEVICE: &str = r#"
UPDATE devices SET updated_at = $5, last_seen_at = $5
WHERE token_digest = device_token_digest($1) AND user_id = $2 AND active = $4 AND platform = $3
RETURNING id, user_id, token, platform, active, created_at, updated_at, last_seen_at,
    false AS created, user_id AS previous_owner, active AS previous_active, platform AS previous_platform
"#;

/// A row of [`UPSERT_DEVICE`] or [`REFRESH_DEVICE`]: the device's columns, then the reports.
#[derive(QueryableByName)]
struct UpsertedDevice {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = SqlUuid)]
    user_id: Uuid,
    #[diesel(sql_type = Text)]
    token: String,
    #[diesel(sql_type = Text)]
    platform: String,
    #[diesel(sql_type = Bool)]
    active: bool,
    #[diesel(sql_type = Timestamptz)]
    created_at: OffsetDateTime,
    #[diesel(sql_type = Timestamptz)]
    updated_at: OffsetDateTime,
    #[diesel(sql_type = Timestamptz)]
    last_seen_at: OffsetDateTime,
    #[diesel(sql_type = Bool)]
    created: bool,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    previous_owner: Option<Uuid>,
    #[diesel(sql_type = Nullable<Bool>)]
    previous_active: Option<bool>,
    #[diesel(sql_type = Nullable<Text>)]
    previous_platform: Option<String>,
}

impl From<UpsertedDevice> for UpsertedRow {
    fn from(row: UpsertedDevice) -> Self {
        let device = DeviceRow {
            id: row.id,
            user_id: row.user_id,
            token: row.token,
            platform: row.platform,
            active: row.active,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_seen_at: row.last_seen_at,
        };
        Self {
            device,
            created: row.created,
            previous_owner: row.previous_owner,
            previous_active: row.previous_active,
            previous_platform: row.previous_platform,
        }
    }
}

/// Runs [`UPSERT_DEVICE`] in the caller's transaction (its lock on the row lasts until the
/// commit), again while a concurrent insert of the token keeps winning, [`UPSERT_ATTEMPTS`]
/// times at most.
pub(crate) async fn upsert_device(
    connection: &mut AsyncPgConnection,
    user: UserId,
    registration: &DeviceRegistration,
    now: OffsetDateTime,
) -> Result<UpsertedRow, TxError> {
    for _ in 0..UPSERT_ATTEMPTS {
        let row: Option<UpsertedDevice> = prepared(UPSERT_DEVICE, |query| {
            query
                .bind::<SqlUuid, _>(Uuid::now_v7())
                .bind::<Text, _>(registration.token.as_str())
                .bind::<SqlUuid, _>(user.as_uuid())
                .bind::<Text, _>(registration.platform.as_str())
                .bind::<Bool, _>(registration.active)
                .bind::<Timestamptz, _>(now)
        })
        .get_result(connection)
        .await
        .optional()?;
        if let Some(row) = row {
            return Ok(row.into());
        }
    }
    let contended = format!("the token's device changed under {UPSERT_ATTEMPTS} registrations in a row");
    Err(TxError::Repository(RepositoryError::Unavailable(contended.into())))
}

/// Runs [`REFRESH_DEVICE`]: `None` when the registration is not a refresh.
async fn refresh_device(
    connection: &mut AsyncPgConnection,
    user: UserId,
    registration: &DeviceRegistration,
    now: OffsetDateTime,
) -> QueryResult<Option<UpsertedRow>> {
    // Read to the end (it runs outside a transaction): see `Unit::Statements`.
    let rows: Vec<UpsertedDevice> = prepared(REFRESH_DEVICE, |query| {
        query
            .bind::<Text, _>(registration.token.as_str())
            .bind::<SqlUuid, _>(user.as_uuid())
            .bind::<Text, _>(registration.platform.as_str())
            .bind::<Bool, _>(registration.active)
            .bind::<Timestamptz, _>(now)
    })
    .get_results(connection)
    .await?;
    Ok(rows.into_iter().next().map(UpsertedRow::from))
}

/// Registers the token with its consent history (in the caller's transaction): the device
/// row is locked by the upsert, then the consent locks of the users whose history changes.
async fn upsert_recorded(
    connection: &mut AsyncPgConnection,
    user: UserId,
    registration: &DeviceRegistration,
    now: OffsetDateTime,
    recorded_at: RecordedAt,
    by: &Provenance,
) -> Result<RegisteredDevice, TxError> {
    let row = upsert_device(connection, user, registration, now).await?;
    lock_and_append(connection, row.history(user, by), recorded_at).await?;
    outbox::append(connection, row.events(user).map_err(TxError::Repository)?, recorded_at).await?;
    row.into_registered(user).map_err(TxError::Repository)
}

/// Registers a token only if no user holds it yet (`ON CONFLICT DO NOTHING`: atomic against
/// a concurrent registration of the same token); `None` when one does.
pub(crate) async fn insert_device_if_new(
    connection: &mut AsyncPgConnection,
    user: UserId,
    registration: &DeviceRegistration,
    now: OffsetDateTime,
) -> QueryResult<Option<UpsertedRow>> {
    let device: Option<DeviceRow> = diesel::insert_into(devices::table)
        .values((
            devices::id.eq(Uuid::now_v7()),
            devices::user_id.eq(user.as_uuid()),
            devices::token.eq(registration.token.as_str()),
            devices::platform.eq(registration.platform.as_str()),
            devices::active.eq(registration.active),
            devices::created_at.eq(now),
            devices::updated_at.eq(now),
            devices::last_seen_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .returning(DEVICE)
        .get_result(connection)
        .await
        .optional()?;
    Ok(device.map(|device| UpsertedRow {
        device,
        created: true,
        previous_owner: None,
        previous_active: None,
        previous_platform: None,
    }))
}

/// Matches the user's device named by `selector`: by id, by exact token, or by the token
/// with runs of `/` merged (what some proxies do to web-push endpoints in paths). `in $alias`
/// matches in an alias of the table (a subquery of a statement on `devices`).
macro_rules! selected_device {
    ($user:expr, $selector:expr) => {
        selected_device!(@columns $user, $selector, devices::user_id, devices::id, devices::token)
    };
    ($user:expr, $selector:expr, in $alias:expr) => {
        selected_device!(@columns $user, $selector,
            $alias.field(devices::user_id), $alias.field(devices::id), $alias.field(devices::token))
    };
    (@columns $user:expr, $selector:expr, $user_id:expr, $id:expr, $token:expr) => {
        $user_id.eq($user.as_uuid()).and(
            $id.nullable()
                .eq($selector.id().map(|id| id.as_uuid()))
                .or($token.eq($selector.token()).nullable())
                .or(regexp_replace($token, "/{2,}", "/", "g").eq($selector.merged_slashes_token()).nullable()),
        )
    };
}

#[async_trait]
impl DeviceRepository for PgStore {
    async fn upsert(
        &self,
        user: UserId,
        registration: DeviceRegistration,
        now: OffsetDateTime,
        by: &Provenance,
        idempotency: Option<IdempotentWrite<RegisteredDevice>>,
    ) -> Result<Idempotent<RegisteredDevice>, RepositoryError> {
        // Without a key, a refresh is one statement: no transaction (but behind a transaction
        // pooler), no history.
        if idempotency.is_none()
            && let Some(row) = self
                .run(Unit::Statements, async |connection| refresh_device(connection, user, &registration, now).await)
                .await?
        {
            return Ok(Idempotent::Executed(row.into_registered(user)?));
        }
        let (by, recorded_at) = (by.clone(), self.recorded_at(now));
        self.idempotent_transaction(idempotency, move |connection| {
            Box::pin(async move { upsert_recorded(connection, user, &registration, now, recorded_at, &by).await })
        })
        .await
    }

    async fn list(&self, user: UserId) -> Result<Option<Vec<Device>>, RepositoryError> {
        // Joined from the user so that "no such user" and "no devices" differ in one query.
        let rows: Vec<Option<DeviceRow>> = self
            .run(Unit::Statements, async |connection| {
                users::table
                    .left_join(devices::table)
                    .filter(users::id.eq(user.as_uuid()))
                    .order(device_order!())
                    .select(DEVICE.nullable())
                    .load(connection)
                    .await
            })
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        devices_from_rows(rows.into_iter().flatten()).map(Some)
    }

    async fn set_active(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        active: bool,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<Device>, RepositoryError> {
        let (selector, by, recorded_at) = (selector.clone(), by.clone(), self.recorded_at(now));
        let outcome = self
            .run::<_, TxError, _>(Unit::Transaction, async |connection| {
                // The old states, read under the devices' locks, taken in id order as every
                // write that locks several devices does (erasing a user), lest two deadlock.
                let selected: Vec<DeviceRow> = devices::table
                    .filter(selected_device!(user, selector))
                    .order(devices::id)
                    .select(DEVICE)
                    .for_update()
                    .load(connection)
                    .await?;
                let changing: Vec<Uuid> =
                    selected.iter().filter(|device| device.active != active).map(|device| device.id).collect();
                // The first in `device_order!`: active first, then most recently seen, then id.
                let first = selected.into_iter().max_by_key(|device| (device.active, device.last_seen_at, device.id));
                let Some(first) = first else { return Ok(None) };
                if changing.is_empty() {
                    // `updated_at` changes only with the state: nothing to write.
                    return Ok(Some(first));
                }
                let updated: Vec<DeviceRow> = kept_prepared(
                    diesel::update(devices::table.filter(devices::id.eq_any(&changing)))
                        .set((devices::active.eq(active), devices::updated_at.eq(now)))
                        .returning(DEVICE),
                )
                .get_results(connection)
                .await?;
                let changes =
                    changing.iter().filter_map(|id| device_change(DeviceId::from(*id), Some(!active), Some(active)));
                lock_and_append(connection, history_entries(user, changes, &by), recorded_at).await?;
                let first = updated.iter().find(|device| device.id == first.id).cloned().unwrap_or(first);
                let events = activation_events(updated, active).map_err(TxError::Repository)?;
                outbox::append(connection, events, recorded_at).await?;
                Ok(Some(first))
            })
            .await?;
        outcome.map(Device::try_from).transpose()
    }

    async fn delete(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<bool, RepositoryError> {
        let (selector, by, recorded_at) = (selector.clone(), by.clone(), self.recorded_at(now));
        let deleted = self
            .run::<_, TxError, _>(Unit::Transaction, async |connection| {
                // Locked in id order (see `set_active`) by the subquery, then deleted.
                let locking = diesel::alias!(devices as locking);
                let locked = locking
                    .filter(selected_device!(user, selector, in locking))
                    .order(locking.field(devices::id))
                    .select(locking.field(devices::id))
                    .for_update();
                let deleted: Vec<DeviceRow> = diesel::delete(devices::table.filter(devices::id.eq_any(locked)))
                    .returning(DEVICE)
                    .get_results(connection)
                    .await?;
                let changes = deleted
                    .iter()
                    .filter_map(|device| device_change(DeviceId::from(device.id), Some(device.active), None));
                lock_and_append(connection, history_entries(user, changes, &by), recorded_at).await?;
                let removed = !deleted.is_empty();
                outbox::append(connection, deletion_events(user, deleted).map_err(TxError::Repository)?, recorded_at)
                    .await?;
                Ok(removed)
            })
            .await?;
        Ok(deleted)
    }
}
