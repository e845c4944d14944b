//! The consent history on PostgreSQL: appended by the writes of the other repositories in
//! their own transactions, read by [`ConsentHistory`].
//!
//! A write that appends to a user's history first holds the user's *consent lock*, the row
//! of `notification_preferences` (`FOR UPDATE`, or the update of that row): the old values
//! it records are read under it, and its rows get their `id` and `at` while no other write
//! of the user's consent runs. `at` is the database's clock when the `INSERT` runs (the last
//! statement of the write, under its locks; see [`crate::RecordClock`]), or the user's
//! latest row if that is later.
//! The `INSERT` starts after the lock was taken, so that (in `READ COMMITTED`) it sees the
//! rows of the write that held the lock before.

use adapters_sql_common::rows::{HistoryRow, history_page, records_from_rows};
use adapters_sql_common::writes::{HistoryEntry, users_of};
use async_trait::async_trait;
use diesel::dsl::{exists, max};
use diesel::prelude::*;
use diesel::sql_types::{Array, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::consent::HistoryPage;
use domain::ports::{ConsentHistory, RecordedSince, RepositoryError};
use domain::user::UserId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::prepared::prepared;
use crate::rows::HISTORY;
use crate::schema::{consent_history, notification_preferences, users};
use crate::work::Unit;
use crate::{PgStore, RecordedAt};

/// Appends rows of several users at once, in their order; each user's rows get one instant,
/// the later of `$1` (the database's clock when `NULL`, read once: a write's rows are one
/// change, never half of one at any instant) and that user's latest `at`.
const APPEND: &str = r#"
WITH stamp AS (SELECT COALESCE($1, clock_timestamp()) AS at)
INSERT INTO consent_history (user_id, at, field, old_value, new_value, actor_kind, actor_name, request_id)
SELECT entry.user_id,
       GREATEST(stamp.at, (SELECT max(h.at) FROM consent_history h WHERE h.user_id = entry.user_id)),
       entry.field, entry.old_value, entry.new_value, entry.actor_kind, entry.actor_name, entry.request_id
FROM stamp, unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
    WITH ORDINALITY AS entry(user_id, field, old_value, new_value, actor_kind, actor_name, request_id, position)
ORDER BY entry.position
"#;

/// Takes the consent locks of `users` (in UUID order, so that writes locking several users
/// never deadlock) and returns those that exist.
pub(crate) async fn lock_consent(connection: &mut AsyncPgConnection, users: &[Uuid]) -> QueryResult<Vec<Uuid>> {
    let mut sorted = users.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    notification_preferences::table
        .filter(notification_preferences::user_id.eq_any(sorted))
        .order(notification_preferences::user_id)
        .select(notification_preferences::user_id)
        .for_update()
        .load(connection)
        .await
}

/// Appends `entries` in one statement (nothing when there are none), recorded at `at` (the
/// store's [`PgStore::recorded_at`]). The caller holds the consent locks of their users.
pub(crate) async fn append(
    connection: &mut AsyncPgConnection,
    entries: Vec<HistoryEntry>,
    at: impl Into<RecordedAt>,
) -> QueryResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut columns = Columns::default();
    for entry in entries {
        columns.push(entry);
    }
    let Columns { user_ids, fields, old_values, new_values, actor_kinds, actor_names, request_ids } = columns;
    prepared(APPEND, |query| {
        query
            .bind::<Nullable<Timestamptz>, _>(at.into())
            .bind::<Array<SqlUuid>, _>(user_ids)
            .bind::<Array<Text>, _>(fields)
            .bind::<Array<Nullable<Text>>, _>(old_values)
            .bind::<Array<Nullable<Text>>, _>(new_values)
            .bind::<Array<Text>, _>(actor_kinds)
            .bind::<Array<Text>, _>(actor_names)
            .bind::<Array<Nullable<Text>>, _>(request_ids)
    })
    .execute(connection)
    .await?;
    Ok(())
}

/// Takes the consent locks of the users of `entries`, then appends them.
pub(crate) async fn lock_and_append(
    connection: &mut AsyncPgConnection,
    entries: Vec<HistoryEntry>,
    at: impl Into<RecordedAt>,
) -> QueryResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    lock_consent(connection, &users_of(&entries)).await?;
    append(connection, entries, at).await
}

/// [`HistoryEntry`]s as the arrays [`APPEND`] unnests.
#[derive(Default)]
struct Columns {
    user_ids: Vec<Uuid>,
    fields: Vec<String>,
    old_values: Vec<Option<String>>,
    new_values: Vec<Option<String>>,
    actor_kinds: Vec<&'static str>,
    actor_names: Vec<String>,
    request_ids: Vec<Option<String>>,
}

impl Columns {
    fn push(&mut self, entry: HistoryEntry) {
        let HistoryEntry { user_id, field, old_value, new_value, actor_kind, actor_name, request_id } = entry;
        self.user_ids.push(user_id);
        self.fields.push(field);
        self.old_values.push(old_value);
        self.new_values.push(new_value);
        self.actor_kinds.push(actor_kind);
        self.actor_names.push(actor_name);
        self.request_ids.push(request_id);
    }
}

#[async_trait]
impl ConsentHistory for PgStore {
    async fn page(
        &self,
        user: UserId,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Option<HistoryPage>, RepositoryError> {
        let rows = self
            .run(Unit::Statements, async |connection| {
                // One more row than asked says whether there is a next page.
                let rows: Vec<HistoryRow> = consent_history::table
                    .filter(consent_history::user_id.eq(user.as_uuid()))
                    .filter(consent_history::id.lt(before.unwrap_or(i64::MAX)))
                    .order(consent_history::id.desc())
                    .limit(i64::from(limit) + 1)
                    .select(HISTORY)
                    .load(connection)
                    .await?;
                // A user always has rows (its registration's): only an empty page asks
                // whether it exists.
                if rows.is_empty() {
                    let known: bool =
                        diesel::select(exists(users::table.find(user.as_uuid()))).get_result(connection).await?;
                    if !known {
                        return Ok(None);
                    }
                }
                Ok::<_, diesel::result::Error>(Some(rows))
            })
            .await?;
        rows.map(|rows| history_page(rows, limit)).transpose()
    }

    async fn since(&self, user: UserId, at: OffsetDateTime) -> Result<RecordedSince, RepositoryError> {
        let (changes, last_before) = self
            .run(Unit::Statements, async |connection| {
                let connection: &AsyncPgConnection = connection;
                // Pipelined: both statements are sent at once.
                // The first change of each field after `at`: its old value is the field's value at
                // `at`, so no later row is needed (the rows sent are bounded by the number of fields,
                // not by how many changes were made since).
                let changes = consent_history::table
                    .filter(consent_history::user_id.eq(user.as_uuid()))
                    .filter(consent_history::at.gt(at))
                    .distinct_on(consent_history::field)
                    .order((consent_history::field, consent_history::id))
                    .select(HISTORY)
                    .load::<HistoryRow>(&mut &*connection);
                let last_before = consent_history::table
                    .filter(consent_history::user_id.eq(user.as_uuid()))
                    .filter(consent_history::at.le(at))
                    .select(max(consent_history::at))
                    .get_result::<Option<OffsetDateTime>>(&mut &*connection);
                futures_util::future::try_join(changes, last_before).await
            })
            .await?;
        Ok(RecordedSince { changes: records_from_rows(changes)?, last_before })
    }
}
