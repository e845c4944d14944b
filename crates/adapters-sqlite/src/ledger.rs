//! The cache's [`InvalidationLedger`], in `cache_invalidation_ledger`.

use async_trait::async_trait;
use diesel::prelude::*;
use diesel::upsert::excluded;
use domain::cache::{InvalidationLedger, LedgerEntry};
use domain::ports::RepositoryError;
use domain::user::UserId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::schema::{IDS_PER_QUERY, Id, cache_invalidation_ledger as ledger};

/// A recording to insert.
#[derive(Insertable)]
#[diesel(table_name = ledger)]
struct NewRecording {
    user_id: Id,
    mark: Id,
    recorded_at: OffsetDateTime,
}

#[async_trait]
impl InvalidationLedger for SqliteStore {
    async fn record(&self, users: &[UserId]) -> Result<(), RepositoryError> {
        let mut ids: Vec<Uuid> = users.iter().map(|user| user.as_uuid()).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        let recorded_at = OffsetDateTime::now_utc();
        self.write(move |connection| {
            for id in ids {
                let recording = NewRecording { user_id: Id(id), mark: Id(Uuid::new_v4()), recorded_at };
                diesel::insert_into(ledger::table)
                    .values(&recording)
                    .on_conflict(ledger::user_id)
                    .do_update()
                    .set((
                        ledger::mark.eq(excluded(ledger::mark)),
                        ledger::recorded_at.eq(excluded(ledger::recorded_at)),
                    ))
                    .execute(connection)?;
            }
            Ok(())
        })
        .await
    }

    async fn recorded(&self, limit: usize) -> Result<Vec<LedgerEntry>, RepositoryError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(Uuid, Uuid)> = self
            .read(move |connection| {
                Ok(ledger::table
                    .select((ledger::user_id, ledger::mark))
                    .order(ledger::recorded_at)
                    .limit(limit)
                    .load(connection)?)
            })
            .await?;
        Ok(rows.into_iter().map(|(user, mark)| LedgerEntry { user: UserId::from(user), mark }).collect())
    }

    async fn forget(&self, entries: &[LedgerEntry]) -> Result<(), RepositoryError> {
        if entries.is_empty() {
            return Ok(());
        }
        let marks: Vec<Uuid> = entries.iter().map(|entry| entry.mark).collect();
        self.write(move |connection| {
            for chunk in marks.chunks(IDS_PER_QUERY) {
                diesel::delete(ledger::table.filter(ledger::mark.eq_any(chunk.iter().copied().map(Id))))
                    .execute(connection)?;
            }
            Ok(())
        })
        .await
    }
}
