//! The consent history on SQLite: appended by the writes of the other repositories in
//! their own transactions, read by [`ConsentHistory`].
//!
//! Write transactions are serialized (see the crate docs): the old values a write records
//! and the user's latest `at` are read with no other write running, so a row's `at` is the
//! later of the write's `now` and the user's latest row, and ids follow the same order.

use std::collections::HashMap;

use adapters_sql_common::rows::{HistoryRow, history_page, records_from_rows};
use adapters_sql_common::writes::{HistoryEntry, users_of};
use async_trait::async_trait;
use diesel::dsl::min;
use diesel::prelude::*;
use domain::consent::HistoryPage;
use domain::ports::{ConsentHistory, RecordedSince, RepositoryError};
use domain::user::UserId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::schema::{HISTORY, Id, consent_history, user_exists};

/// A row to insert.
#[derive(Insertable)]
#[diesel(table_name = consent_history)]
struct HistoryValues {
    user_id: Id,
    at: OffsetDateTime,
    field: String,
    old_value: Option<String>,
    new_value: Option<String>,
    actor_kind: &'static str,
    actor_name: String,
    request_id: Option<String>,
}

/// The time of `user`'s latest row (the last in id order: times never decrease along it;
/// diesel has no `max` of SQLite's text timestamps).
fn latest(connection: &mut SqliteConnection, user: Uuid) -> QueryResult<Option<OffsetDateTime>> {
    consent_history::table
        .filter(consent_history::user_id.eq(Id(user)))
        .order(consent_history::id.desc())
        .select(consent_history::at)
        .first(connection)
        .optional()
}

/// Appends `entries`, in their order (inside the caller's write transaction); each user's
/// rows get the later of `now` and that user's latest `at`.
pub(crate) fn append(
    connection: &mut SqliteConnection,
    entries: Vec<HistoryEntry>,
    now: OffsetDateTime,
) -> QueryResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut times = HashMap::new();
    for user in users_of(&entries) {
        times.insert(user, latest(connection, user)?.map_or(now, |latest| latest.max(now)));
    }
    let rows: Vec<HistoryValues> = entries
        .into_iter()
        .map(|HistoryEntry { user_id, field, old_value, new_value, actor_kind, actor_name, request_id }| {
            HistoryValues {
                user_id: Id(user_id),
                at: times.get(&user_id).copied().unwrap_or(now),
                field,
                old_value,
                new_value,
                actor_kind,
                actor_name,
                request_id,
            }
        })
        .collect();
    diesel::insert_into(consent_history::table).values(rows).execute(connection)?;
    Ok(())
}

#[async_trait]
impl ConsentHistory for SqliteStore {
    async fn page(
        &self,
        user: UserId,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Option<HistoryPage>, RepositoryError> {
        self.read(move |connection| {
            connection.transaction(|connection| {
                if !user_exists(connection, user)? {
                    return Ok(None);
                }
                // One more row than asked says whether there is a next page.
                let rows: Vec<HistoryRow> = consent_history::table
                    .filter(consent_history::user_id.eq(Id::from(user)))
                    .filter(consent_history::id.lt(before.unwrap_or(i64::MAX)))
                    .order(consent_history::id.desc())
                    .limit(i64::from(limit) + 1)
                    .select(HISTORY)
                    .load(connection)?;
                Ok(Some(history_page(rows, limit)?))
            })
        })
        .await
    }

    async fn since(&self, user: UserId, at: OffsetDateTime) -> Result<RecordedSince, RepositoryError> {
        self.read(move |connection| {
            connection.transaction(|connection| {
                // The first change of each field after `at`: its old value is the field's
                // value at `at`, so no later row is needed (the cost is bounded by the number of
                // fields, not by how many changes were made since).
                let first_of_each_field: Vec<i64> = consent_history::table
                    .filter(consent_history::user_id.eq(Id::from(user)))
                    .filter(consent_history::at.gt(at))
                    .group_by(consent_history::field)
                    .select(min(consent_history::id).assume_not_null())
                    .load(connection)?;
                let changes: Vec<HistoryRow> = consent_history::table
                    .filter(consent_history::id.eq_any(first_of_each_field))
                    .order(consent_history::id.desc())
                    .select(HISTORY)
                    .load(connection)?;
                // The last in id order is the latest: times never decrease along it.
                let last_before: Option<OffsetDateTime> = consent_history::table
                    .filter(consent_history::user_id.eq(Id::from(user)))
                    .filter(consent_history::at.le(at))
                    .order(consent_history::id.desc())
                    .select(consent_history::at)
                    .first(connection)
                    .optional()?;
                Ok(RecordedSince { changes: records_from_rows(changes)?, last_before })
            })
        })
        .await
    }
}
