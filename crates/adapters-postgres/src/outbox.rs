//! The transactional outbox on PostgreSQL: [`append`] records a write's change events in the
//! write's own transaction; [`EventOutbox`] relays, serves and prunes them.
//!
//! **One relay at a time.** A relay round runs in one transaction that first takes a
//! transaction-scoped advisory lock with `pg_try_advisory_xact_lock` (never waiting: another
//! instance holding it means this one has nothing to do). A session lock would outlive a
//! connection returned to PgBouncer in transaction mode; this one ends with the transaction,
//! also when the instance is killed (the server aborts the transaction when the connection
//! drops). One relay keeps every subject's events in order at the cost of one publisher's
//! throughput, which is well above what the writes produce (see the README's figures);
//! partitioning by user would keep the order too but needs a fixed partition count that
//! every replica agrees on.
//!
//! **The feed's order.** Positions (`bigserial`) are taken when a row is inserted, not when
//! its transaction commits: a cursor on them would skip a row committed after a later one
//! was served. The relay, alone under its lock, numbers committed events in position order
//! (`feed_position`), so that a cursor on that number never skips anything. A subject's
//! events come in sequence order: a write takes the subject's next sequence number under the
//! row lock of `event_sequences` and inserts its event after it, so the event of the write
//! that held the lock before was inserted (lower position) and committed before.

use adapters_sql_common::events::{PRUNE_BATCH, Resume, SEQUENCE_BATCH, feed_limit, in_lock_order};
use adapters_sql_common::rows::EventRow;
use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::event::{Backlog, ChangeEvent, NewEvent, RelayRound};
use domain::ports::{EventOutbox, EventPublisher, PublishError, RelayError, RepositoryError};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::prepared::{kept_prepared, prepared};
use crate::rows::EVENT;
use crate::schema::outbox_events;
use crate::work::Unit;
use crate::{PgStore, RecordedAt};

/// Records one event with its subject's next sequence number: the counter's row lock is held
/// until the write commits, so that the subject's next event waits for this one.
const APPEND_EVENT: &str = r#"
WITH next AS (
    INSERT INTO event_sequences AS s (subject, last_sequence) VALUES ($2, 1)
    ON CONFLICT (subject) DO UPDATE SET last_sequence = s.last_sequence + 1
    RETURNING s.last_sequence
)
INSERT INTO outbox_events (id, subject, sequence, event_type, recorded_at, data)
SELECT $1, $2, next.last_sequence, $3, COALESCE($4, clock_timestamp()), $5 FROM next
"#;

/// A relay that hangs on the broker must not hold its lock and snapshot for long: the
/// publisher's own timeouts come first; this is the backstop.
const RELAY_TIMEOUT: &str = "SET LOCAL idle_in_transaction_session_timeout = '30s'";

/// The relay's lock (the two-key form, a key space apart from the idempotency keys' locks).
const TRY_RELAY_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock(hashtext('user-service'), hashtext('outbox-relay')) AS locked";

/// Numbers up to `$1` committed events not yet in the feed, in position order, after the
/// last number given (read once: the subquery is uncorrelated).
const SEQUENCE: &str = r#"
WITH next AS (
    SELECT position, row_number() OVER (ORDER BY position) AS rank
    FROM outbox_events WHERE feed_position IS NULL ORDER BY position LIMIT $1
)
UPDATE outbox_events AS e
SET feed_position = (SELECT COALESCE(max(feed_position), 0) FROM outbox_events) + next.rank
FROM next WHERE e.position = next.position
"#;

/// Deletes the done events recorded before `$1` among the `$2` oldest (by position: the
/// oldest events are the first candidates, and the statement stays bounded however many
/// events wait): published ones, or, without a broker (`$3` false), those in the feed.
const PRUNE: &str = r#"
DELETE FROM outbox_events WHERE position IN (
    SELECT position FROM (
        SELECT position, recorded_at, feed_position, published_at FROM outbox_events ORDER BY position LIMIT $2
    ) AS oldest
    WHERE recorded_at < $1 AND (published_at IS NOT NULL OR (NOT $3 AND feed_position IS NOT NULL))
)
"#;

/// How many pending events [`EventOutbox::backlog`] counts at most (a count of millions
/// would cost more than the figure is worth).
const BACKLOG_COUNT_CAP: i64 = 100_000;

/// The backlog: pending events (unpublished when `$1`, else not yet in the feed), capped,
/// and the oldest one's instant.
const BACKLOG: &str = r#"
SELECT
    CASE WHEN $1
        THEN (SELECT count(*) FROM (SELECT 1 FROM outbox_events WHERE published_at IS NULL LIMIT $2) AS p)
        ELSE (SELECT count(*) FROM (SELECT 1 FROM outbox_events WHERE feed_position IS NULL LIMIT $2) AS p)
    END AS pending,
    LEAST(
        (SELECT recorded_at FROM outbox_events WHERE feed_position IS NULL ORDER BY position LIMIT 1),
        CASE WHEN $1 THEN (SELECT recorded_at FROM outbox_events
                           WHERE published_at IS NULL AND feed_position IS NOT NULL ORDER BY feed_position LIMIT 1)
        END
    ) AS oldest
"#;

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(QueryableByName)]
struct BacklogRow {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<OffsetDateTime>,
}

/// Records `events` in the caller's transaction, as its last statements (the sequence
/// counters are the last locks a write takes), at `at` (the store's
/// [`PgStore::recorded_at`]).
pub(crate) async fn append(
    connection: &mut AsyncPgConnection,
    events: Vec<NewEvent>,
    at: RecordedAt,
) -> QueryResult<()> {
    for event in in_lock_order(events) {
        let NewEvent { id, kind, subject, data } = event;
        prepared(APPEND_EVENT, |query| {
            query
                .bind::<SqlUuid, _>(id)
                .bind::<Text, _>(subject)
                .bind::<Text, _>(kind.as_str())
                .bind::<Nullable<Timestamptz>, _>(at)
                .bind::<Text, _>(data)
        })
        .execute(connection)
        .await?;
    }
    Ok(())
}

/// What a relay transaction did before it committed: the round, and the publisher's
/// failure if it failed (the sequencing is committed all the same: the feed goes on while
/// the broker is down).
type RelayOutcome = (RelayRound, Option<PublishError>);

async fn relay_round(
    connection: &mut AsyncPgConnection,
    publisher: Option<&dyn EventPublisher>,
    limit: u32,
) -> QueryResult<RelayOutcome> {
    // Kept prepared, as every statement of the round: it runs about ten times a second even idle.
    prepared(RELAY_TIMEOUT, |query| query).execute(connection).await?;
    let locked: Locked = prepared(TRY_RELAY_LOCK, |query| query).get_result(connection).await?;
    if !locked.locked {
        return Ok((RelayRound::Busy, None));
    }
    let sequenced = prepared(SEQUENCE, |query| query.bind::<BigInt, _>(SEQUENCE_BATCH)).execute(connection).await?;
    let mut more = i64::try_from(sequenced).unwrap_or(i64::MAX) >= SEQUENCE_BATCH;
    let sequenced = u64::try_from(sequenced).unwrap_or_default();
    let Some(publisher) = publisher else {
        return Ok((RelayRound::Relayed { sequenced, published: 0, more }, None));
    };
    let limit = feed_limit(limit);
    let mut rows: Vec<EventRow> = outbox_events::table
        .filter(outbox_events::published_at.is_null())
        .filter(outbox_events::feed_position.is_not_null())
        .order(outbox_events::feed_position)
        .limit(limit + 1)
        .select(EVENT)
        .load(connection)
        .await?;
    more |= rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    if rows.is_empty() {
        return Ok((RelayRound::Relayed { sequenced, published: 0, more }, None));
    }
    let positions: Vec<i64> = rows.iter().map(|row| row.position).collect();
    let events: Vec<ChangeEvent> = rows.into_iter().map(ChangeEvent::from).collect();
    if let Err(error) = publisher.publish(&events).await {
        return Ok((RelayRound::Relayed { sequenced, published: 0, more: false }, Some(error)));
    }
    let published = kept_prepared(
        diesel::update(outbox_events::table.filter(outbox_events::position.eq_any(&positions)))
            .set(outbox_events::published_at.eq(diesel::dsl::now)),
    )
    .execute(connection)
    .await?;
    Ok((RelayRound::Relayed { sequenced, published: u64::try_from(published).unwrap_or_default(), more }, None))
}

#[async_trait]
impl EventOutbox for PgStore {
    async fn relay<'a>(
        &self,
        publisher: Option<&'a dyn EventPublisher>,
        limit: u32,
        _now: OffsetDateTime,
    ) -> Result<RelayRound, RelayError> {
        let outcome = self
            .run::<_, diesel::result::Error, _>(Unit::Transaction, async |connection| {
                relay_round(connection, publisher, limit).await
            })
            .await;
        match outcome {
            Ok((round, None)) => Ok(round),
            Ok((_, Some(error))) => Err(RelayError::Publish(error)),
            Err(error) => Err(RelayError::Store(error)),
        }
    }

    async fn feed(&self, after: Option<Uuid>, limit: u32) -> Result<Option<Vec<ChangeEvent>>, RepositoryError> {
        let rows = self
            .run(Unit::Statements, async |connection| {
                let cursor = match after {
                    None => 0,
                    Some(after) => {
                        let position: Option<Option<i64>> = outbox_events::table
                            .filter(outbox_events::id.eq(after))
                            .select(outbox_events::feed_position)
                            .get_result(connection)
                            .await
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
                    .load(connection)
                    .await?;
                Ok::<_, diesel::result::Error>(Some(rows))
            })
            .await?;
        Ok(rows.map(|rows| rows.into_iter().map(ChangeEvent::from).collect()))
    }

    async fn prune(&self, before: OffsetDateTime, published_only: bool) -> Result<u64, RepositoryError> {
        let deleted = self
            .run(Unit::Statements, async |connection| {
                // Planned at each call, unlike the relay's statements: its best plan depends on
                // the table's size, and a plan kept from when the table was small (a generic
                // plan, before any ANALYZE) scanned it all once it held a million events
                // (112-215 ms a statement against 12-38). It runs once a minute.
                diesel::sql_query(PRUNE)
                    .bind::<Timestamptz, _>(before)
                    .bind::<BigInt, _>(PRUNE_BATCH)
                    .bind::<Bool, _>(published_only)
                    .execute(connection)
                    .await
            })
            .await?;
        Ok(u64::try_from(deleted).unwrap_or_default())
    }

    async fn backlog(&self, unpublished: bool) -> Result<Backlog, RepositoryError> {
        let row: BacklogRow = self
            .run(Unit::Statements, async |connection| {
                prepared(BACKLOG, |query| query.bind::<Bool, _>(unpublished).bind::<BigInt, _>(BACKLOG_COUNT_CAP))
                    .get_result(connection)
                    .await
            })
            .await?;
        Ok(Backlog { pending: u64::try_from(row.pending).unwrap_or_default(), oldest: row.oldest })
    }
}
