//! The transactional outbox on SQLite (see the PostgreSQL store's `outbox` module for the
//! design): [`append`] records a write's change events in the write's own transaction;
//! [`EventOutbox`] relays, serves and prunes them.
//!
//! Writes are serialized here, so an event's `position` is also the order in which its
//! transaction committed: the relay gives it its `position` as its feed position. One relay
//! runs per process (an in-process lock; the embedded store has one process).

use adapters_sql_common::events::{PRUNE_BATCH, Resume, SEQUENCE_BATCH, feed_limit, in_lock_order};
use adapters_sql_common::rows::EventRow;
use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use domain::event::{Backlog, ChangeEvent, NewEvent, RelayRound};
use domain::ports::{EventOutbox, EventPublisher, RelayError, RepositoryError};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::SqliteStore;
use crate::schema::{EVENT, Id, event_sequences, outbox_events};

/// Gives up to `?` events not yet in the feed their position as their feed position.
const SEQUENCE: &str = "UPDATE outbox_events SET feed_position = position WHERE position IN \
    (SELECT position FROM outbox_events WHERE feed_position IS NULL ORDER BY position LIMIT ?)";

/// Records `events` in the caller's write transaction, at `now`, each with its subject's
/// next sequence number.
pub(crate) fn append(connection: &mut SqliteConnection, events: Vec<NewEvent>, now: OffsetDateTime) -> QueryResult<()> {
    for event in in_lock_order(events) {
        let NewEvent { id, kind, subject, data } = event;
        let sequence: i64 = diesel::insert_into(event_sequences::table)
            .values((event_sequences::subject.eq(&subject), event_sequences::last_sequence.eq(1)))
            .on_conflict(event_sequences::subject)
            .do_update()
            .set(event_sequences::last_sequence.eq(event_sequences::last_sequence + 1))
            .returning(event_sequences::last_sequence)
            .get_result(connection)?;
        diesel::insert_into(outbox_events::table)
            .values((
                outbox_events::id.eq(Id(id)),
                outbox_events::subject.eq(subject),
                outbox_events::sequence.eq(sequence),
                outbox_events::event_type.eq(kind.as_str()),
                outbox_events::recorded_at.eq(now),
                outbox_events::data.eq(data),
            ))
            .execute(connection)?;
    }
    Ok(())
}

#[async_trait]
impl EventOutbox for SqliteStore {
    async fn relay<'a>(
        &self,
        publisher: Option<&'a dyn EventPublisher>,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<RelayRound, RelayError> {
        let Ok(_relay) = self.relay.try_lock() else { return Ok(RelayRound::Busy) };
        let sequenced = self
            .write(|connection| {
                Ok(diesel::sql_query(SEQUENCE).bind::<BigInt, _>(SEQUENCE_BATCH).execute(connection)?)
            })
            .await?;
        let mut more = i64::try_from(sequenced).unwrap_or(i64::MAX) >= SEQUENCE_BATCH;
        let sequenced = u64::try_from(sequenced).unwrap_or_default();
        let Some(publisher) = publisher else { return Ok(RelayRound::Relayed { sequenced, published: 0, more }) };
        let limit = feed_limit(limit);
        let mut rows: Vec<EventRow> = self
            .read(move |connection| {
                Ok(outbox_events::table
                    .filter(outbox_events::published_at.is_null())
                    .filter(outbox_events::feed_position.is_not_null())
                    .order(outbox_events::feed_position)
                    .limit(limit + 1)
                    .select(EVENT)
                    .load(connection)?)
            })
            .await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        more |= rows.len() > limit;
        rows.truncate(limit);
        if rows.is_empty() {
            return Ok(RelayRound::Relayed { sequenced, published: 0, more });
        }
        let positions: Vec<i64> = rows.iter().map(|row| row.position).collect();
        let events: Vec<ChangeEvent> = rows.into_iter().map(ChangeEvent::from).collect();
        publisher.publish(&events).await?;
        let published = self
            .write(move |connection| {
                Ok(diesel::update(outbox_events::table.filter(outbox_events::position.eq_any(positions)))
                    .set(outbox_events::published_at.eq(now))
                    .execute(connection)?)
            })
            .await?;
        Ok(RelayRound::Relayed { sequenced, published: u64::try_from(published).unwrap_or_default(), more })
    }

    async fn feed(&self, after: Option<Uuid>, limit: u32) -> Result<Option<Vec<ChangeEvent>>, RepositoryError> {
        self.read(move |connection| {
            connection.transaction(|connection| {
                let cursor = match after {
                    None => 0,
                    Some(after) => {
                        let position: Option<Option<i64>> = outbox_events::table
                            .filter(outbox_events::id.eq(Id(after)))
                            .select(outbox_events::feed_position)
                            .get_result(connection)
                            .optional()?;
                        match Resume::from_lookup(position) {
                            Resume::After(position) => position,
                            Resume::NothingYet => return Ok(Some(Vec::new())),
                            Resume::UnknownCursor => return Ok(None),
                        }
                    }
                };
                let rows: Vec<EventRow> = outbox_events::table
                    .filter(outbox_events::feed_position.gt(cursor))
                    .order(outbox_events::feed_position)
                    .limit(feed_limit(limit))
                    .select(EVENT)
                    .load(connection)?;
                Ok(Some(rows.into_iter().map(ChangeEvent::from).collect()))
            })
        })
        .await
    }

    async fn prune(&self, before: OffsetDateTime, published_only: bool) -> Result<u64, RepositoryError> {
        self.write(move |connection| {
            // The oldest events are the candidates (see the PostgreSQL store's `PRUNE`).
            let oldest: Vec<(i64, OffsetDateTime, Option<i64>, Option<OffsetDateTime>)> = outbox_events::table
                .order(outbox_events::position)
                .limit(PRUNE_BATCH)
                .select((
                    outbox_events::position,
                    outbox_events::recorded_at,
                    outbox_events::feed_position,
                    outbox_events::published_at,
                ))
                .load(connection)?;
            let done: Vec<i64> = oldest
                .into_iter()
                .filter(|(_, recorded_at, feed_position, published_at)| {
                    *recorded_at < before && (published_at.is_some() || (!published_only && feed_position.is_some()))
                })
                .map(|(position, ..)| position)
                .collect();
            let mut deleted = 0;
            for chunk in done.chunks(crate::schema::IDS_PER_QUERY) {
                deleted += diesel::delete(outbox_events::table.filter(outbox_events::position.eq_any(chunk)))
                    .execute(connection)?;
            }
            Ok(u64::try_from(deleted).unwrap_or_default())
        })
        .await
    }

    async fn backlog(&self, unpublished: bool) -> Result<Backlog, RepositoryError> {
        self.read(move |connection| {
            connection.transaction(|connection| {
                let mut pending = outbox_events::table.into_boxed();
                pending = if unpublished {
                    pending.filter(outbox_events::published_at.is_null())
                } else {
                    pending.filter(outbox_events::feed_position.is_null())
                };
                let oldest: Option<OffsetDateTime> = pending
                    .order(outbox_events::position)
                    .select(outbox_events::recorded_at)
                    .first(connection)
                    .optional()?;
                let count: i64 = if unpublished {
                    outbox_events::table.filter(outbox_events::published_at.is_null()).count().get_result(connection)?
                } else {
                    outbox_events::table
                        .filter(outbox_events::feed_position.is_null())
                        .count()
                        .get_result(connection)?
                };
                Ok(Backlog { pending: u64::try_from(count).unwrap_or_default(), oldest })
            })
        })
        .await
    }
}
