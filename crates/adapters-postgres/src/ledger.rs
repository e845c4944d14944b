//! The cache's [`InvalidationLedger`], in `cache_invalidation_ledger`. Reads and forgetting
//! run on the ledger's dedicated connection when there is one: instances renew their cache
//! lease with them, and a busy pool must not make every instance stop using the cache.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{Array, Uuid as SqlUuid};
use diesel::upsert::excluded;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::cache::{InvalidationLedger, LedgerEntry};
use domain::ports::RepositoryError;
use domain::user::UserId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::schema::cache_invalidation_ledger as ledger;
use crate::work::{Unit, Work};

/// A recording to insert.
#[derive(Insertable)]
#[diesel(table_name = ledger)]
struct NewRecording {
    user_id: Uuid,
    mark: Uuid,
    recorded_at: OffsetDateTime,
}

/// One new recording per distinct user (one statement may not update a row twice).
fn recordings(users: &[UserId]) -> Vec<NewRecording> {
    let mut ids: Vec<Uuid> = users.iter().map(|user| user.as_uuid()).collect();
    ids.sort_unstable();
    ids.dedup();
    let recorded_at = OffsetDateTime::now_utc();
    ids.into_iter().map(|user_id| NewRecording { user_id, mark: Uuid::new_v4(), recorded_at }).collect()
}

#[async_trait]
impl InvalidationLedger for PgStore {
    async fn record(&self, users: &[UserId]) -> Result<(), RepositoryError> {
        let recordings = recordings(users);
        if recordings.is_empty() {
            return Ok(());
        }
        self.run(Unit::Statements, async |connection| {
            diesel::insert_into(ledger::table)
                .values(&recordings)
                .on_conflict(ledger::user_id)
                .do_update()
                .set((ledger::mark.eq(excluded(ledger::mark)), ledger::recorded_at.eq(excluded(ledger::recorded_at))))
                .execute(connection)
                .await
        })
        .await?;
        Ok(())
    }

    async fn recorded(&self, limit: usize) -> Result<Vec<LedgerEntry>, RepositoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let query = async move |connection: &mut AsyncPgConnection| {
            ledger::table
                .select((ledger::user_id, ledger::mark))
                .order(ledger::recorded_at)
                .limit(limit)
                .load::<(Uuid, Uuid)>(connection)
                .await
        };
        let rows = self.on_ledger_connection(query).await?;
        Ok(rows.into_iter().map(|(user, mark)| LedgerEntry { user: UserId::from(user), mark }).collect())
    }

    async fn forget(&self, entries: &[LedgerEntry]) -> Result<(), RepositoryError> {
        if entries.is_empty() {
            return Ok(());
        }
        let marks: Vec<Uuid> = entries.iter().map(|entry| entry.mark).collect();
        // Rows are locked in user order, as `record`'s upsert locks them, so that a replay
        // forgetting several users never deadlocks with a change recording several.
        let forget = async move |connection: &mut AsyncPgConnection| {
            diesel::sql_query(
                "DELETE FROM cache_invalidation_ledger WHERE user_id IN \
                 (SELECT user_id FROM cache_invalidation_ledger WHERE mark = ANY($1) ORDER BY user_id FOR UPDATE)",
            )
            .bind::<Array<SqlUuid>, _>(marks)
            .execute(connection)
            .await
        };
        self.on_ledger_connection(forget).await?;
        Ok(())
    }
}

impl PgStore {
    /// Runs `query` on the ledger's dedicated connection, or on a pooled one without it.
    async fn on_ledger_connection<T, F>(&self, query: F) -> Result<T, RepositoryError>
    where
        T: Send,
        for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + Work<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
    {
        match &self.dedicated {
            Some(dedicated) => dedicated.ledger.run(query).await.map_err(RepositoryError::Unavailable),
            None => self.run(Unit::Statements, query).await,
        }
    }
}
