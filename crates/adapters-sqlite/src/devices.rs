//! [`DeviceRepository`] on SQLite.

use adapters_sql_common::device_order;
use adapters_sql_common::devices::{DeviceMatcher, UpsertedRow};
use adapters_sql_common::events::{activation_events, deletion_events};
use adapters_sql_common::rows::{DeviceRow, devices_from_rows};
use adapters_sql_common::writes::history_entries;
use async_trait::async_trait;
use diesel::prelude::*;
use diesel::upsert::excluded;
use domain::consent::{Provenance, device_change};
use domain::device::{Device, DeviceId, DeviceRegistration, DeviceSelector, RegisteredDevice};
use domain::idempotency::{Idempotent, IdempotentWrite};
use domain::ports::{DeviceRepository, RepositoryError};
use domain::user::UserId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::errors::StoreError;
use crate::history::append;
use crate::idempotency::idempotently;
use crate::outbox;
use crate::schema::{DEVICE, Id, devices, user_exists};

/// Registers or moves a token (in the caller's write transaction, so that the owner and
/// state read first are still those when the upsert runs). `ON CONFLICT` on the unique token turns
/// a known token into an update; the row was created exactly when it carries the id this
/// call proposed.
pub(crate) fn upsert_device(
    connection: &mut SqliteConnection,
    user: UserId,
    registration: &DeviceRegistration,
    now: OffsetDateTime,
) -> Result<UpsertedRow, StoreError> {
    // Checked first: SQLite reports a foreign-key failure without naming the constraint.
    if !user_exists(connection, user)? {
        return Err(RepositoryError::UserNotFound.into());
    }
    let token = registration.token.as_str();
    let previous: Option<(Uuid, bool, String)> = devices::table
        .filter(devices::token.eq(token))
        .select((devices::user_id, devices::active, devices::platform))
        .get_result(connection)
        .optional()?;
    let proposed = Uuid::now_v7();
    let device: DeviceRow = diesel::insert_into(devices::table)
        .values((
            devices::id.eq(Id(proposed)),
            devices::user_id.eq(Id::from(user)),
            devices::token.eq(token),
            devices::platform.eq(registration.platform.as_str()),
            devices::active.eq(registration.active),
            devices::created_at.eq(now),
            devices::updated_at.eq(now),
            devices::last_seen_at.eq(now),
        ))
        .on_conflict(devices::token)
        .do_update()
        .set((
            devices::user_id.eq(excluded(devices::user_id)),
            devices::platform.eq(excluded(devices::platform)),
            devices::active.eq(excluded(devices::active)),
            devices::updated_at.eq(excluded(devices::updated_at)),
            devices::last_seen_at.eq(excluded(devices::last_seen_at)),
        ))
        .returning(DEVICE)
        .get_result(connection)?;
    Ok(UpsertedRow {
        created: device.id == proposed,
        device,
        previous_owner: previous.as_ref().map(|(owner, _, _)| *owner),
        previous_active: previous.as_ref().map(|(_, active, _)| *active),
        previous_platform: previous.map(|(_, _, platform)| platform),
    })
}

/// Whether some user holds the registration's token.
pub(crate) fn token_is_held(connection: &mut SqliteConnection, registration: &DeviceRegistration) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(devices::table.filter(devices::token.eq(registration.token.as_str()))))
        .get_result(connection)
}

/// The ids and states of `user`'s devices that `selector` names, in profile order. The
/// merged-slashes comparison runs here rather than in SQL (SQLite has no `regexp_replace`);
/// a user has few devices.
fn selected_devices(
    connection: &mut SqliteConnection,
    user: UserId,
    selector: &DeviceSelector,
) -> QueryResult<Vec<(Uuid, bool)>> {
    let matcher = DeviceMatcher::new(selector);
    let candidates: Vec<(Uuid, String, bool)> = devices::table
        .filter(devices::user_id.eq(Id::from(user)))
        .order(device_order!())
        .select((devices::id, devices::token, devices::active))
        .load(connection)?;
    Ok(candidates
        .into_iter()
        .filter(|(id, token, _)| matcher.matches(*id, token))
        .map(|(id, _, active)| (id, active))
        .collect())
}

#[async_trait]
impl DeviceRepository for SqliteStore {
    async fn upsert(
        &self,
        user: UserId,
        registration: DeviceRegistration,
        now: OffsetDateTime,
        by: &Provenance,
        idempotency: Option<IdempotentWrite<RegisteredDevice>>,
    ) -> Result<Idempotent<RegisteredDevice>, RepositoryError> {
        let by = by.clone();
        self.write(move |connection| {
            idempotently(connection, idempotency, |connection| {
                let row = upsert_device(connection, user, &registration, now)?;
                append(connection, row.history(user, &by), now)?;
                outbox::append(connection, row.events(user)?, now)?;
                Ok(row.into_registered(user)?)
            })
        })
        .await
    }

    async fn list(&self, user: UserId) -> Result<Option<Vec<Device>>, RepositoryError> {
        self.read(move |connection| {
            connection.transaction(|connection| {
                if !user_exists(connection, user)? {
                    return Ok(None);
                }
                let rows: Vec<DeviceRow> = devices::table
                    .filter(devices::user_id.eq(Id::from(user)))
                    .order(device_order!())
                    .select(DEVICE)
                    .load(connection)?;
                Ok(Some(devices_from_rows(rows)?))
            })
        })
        .await
    }

    async fn set_active(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        active: bool,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<Device>, RepositoryError> {
        let (selector, by) = (selector.clone(), by.clone());
        self.write(move |connection| {
            let selected = selected_devices(connection, user, &selector)?;
            let Some((first, _)) = selected.first().copied() else { return Ok(None) };
            // `updated_at` moves only for a device whose state changes.
            let changing: Vec<Uuid> =
                selected.iter().filter(|(_, current)| *current != active).map(|(id, _)| *id).collect();
            if !changing.is_empty() {
                let updated: Vec<DeviceRow> =
                    diesel::update(devices::table.filter(devices::id.eq_any(changing.iter().copied().map(Id))))
                        .set((devices::active.eq(active), devices::updated_at.eq(now)))
                        .returning(DEVICE)
                        .get_results(connection)?;
                let changes =
                    changing.iter().filter_map(|id| device_change(DeviceId::from(*id), Some(!active), Some(active)));
                append(connection, history_entries(user, changes, &by), now)?;
                outbox::append(connection, activation_events(updated, active)?, now)?;
            }
            let device: DeviceRow = devices::table.find(Id(first)).select(DEVICE).get_result(connection)?;
            Ok(Some(Device::try_from(device)?))
        })
        .await
    }

    async fn delete(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<bool, RepositoryError> {
        let (selector, by) = (selector.clone(), by.clone());
        self.write(move |connection| {
            let selected = selected_devices(connection, user, &selector)?;
            if selected.is_empty() {
                return Ok(false);
            }
            let deleted: Vec<DeviceRow> =
                diesel::delete(devices::table.filter(devices::id.eq_any(selected.iter().map(|(id, _)| Id(*id)))))
                    .returning(DEVICE)
                    .get_results(connection)?;
            let changes =
                selected.iter().filter_map(|(id, active)| device_change(DeviceId::from(*id), Some(*active), None));
            append(connection, history_entries(user, changes, &by), now)?;
            outbox::append(connection, deletion_events(user, deleted)?, now)?;
            Ok(true)
        })
        .await
    }
}
