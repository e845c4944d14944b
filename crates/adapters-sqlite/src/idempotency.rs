//! Idempotency records: claimed and written inside the write transaction of the change they
//! belong to, and [`IdempotencyRepository`] for the fast check before expensive work.
//!
//! There is no lock to take per key (SQLite has no advisory locks, and needs none): the
//! write transaction's `BEGIN IMMEDIATE` already excludes every other writer, in this
//! process and in others, until it commits with its record. A second request with the key
//! waits for that, then finds the record and replays it; it is never "in flight".

use adapters_sql_common::rows::{RecordRow, stored_status, stored_user_ids};
use async_trait::async_trait;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, TimestamptzSqlite};
use domain::idempotency::{
    IdempotencyKey, IdempotencyRecord, Idempotent, IdempotentRequest, IdempotentWrite, StoredResponse,
};
use domain::ports::{IdempotencyRepository, RepositoryError};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::errors::StoreError;
use crate::schema::{RECORD, idempotency_records};

/// The record of `caller`'s `key` unexpired at `now`, if any.
fn find_unexpired(
    connection: &mut SqliteConnection,
    caller: &str,
    key: &str,
    now: OffsetDateTime,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    let row: Option<RecordRow> = idempotency_records::table
        .find((caller, key))
        .filter(idempotency_records::expires_at.gt(now))
        .select(RECORD)
        .get_result(connection)
        .optional()?;
    Ok(row.map(IdempotencyRecord::try_from).transpose()?)
}

/// Runs `write` under `idempotency` inside the current write transaction: a completed
/// request's stored answer instead when there is one, else the write, with its answer
/// recorded before the transaction commits. The one skeleton of every idempotent write of
/// this store.
pub(crate) fn idempotently<T>(
    connection: &mut SqliteConnection,
    idempotency: Option<IdempotentWrite<T>>,
    write: impl FnOnce(&mut SqliteConnection) -> Result<T, StoreError>,
) -> Result<Idempotent<T>, StoreError> {
    let Some(idempotent) = idempotency else {
        return Ok(Idempotent::Executed(write(connection)?));
    };
    if let Some(replay) = claim(connection, &idempotent.request)? {
        return Ok(Idempotent::Replayed(replay));
    }
    let written = write(connection)?;
    record_answer(connection, &idempotent.request, &(idempotent.render)(&written))?;
    Ok(Idempotent::Executed(written))
}

/// Looks for `request`'s record inside the current write transaction: returns its answer
/// when the request already ran, fails when the key was used for another request.
fn claim(connection: &mut SqliteConnection, request: &IdempotentRequest) -> Result<Option<StoredResponse>, StoreError> {
    match find_unexpired(connection, &request.caller, request.key.as_str(), request.received_at)? {
        Some(record) => Ok(Some(record.replay_for(&request.fingerprint)?)),
        None => Ok(None),
    }
}

/// A record to insert.
#[derive(Insertable)]
#[diesel(table_name = idempotency_records)]
struct NewRecord<'a> {
    caller: &'a str,
    key: &'a str,
    request_fingerprint: &'a [u8],
    response_status: i16,
    response_body: &'a [u8],
    response_location: Option<&'a str>,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    invalidates: String,
}

/// Stores the answer of `request`, replacing an expired record of the same key ([`claim`]
/// found no unexpired one in this transaction).
fn record_answer(
    connection: &mut SqliteConnection,
    request: &IdempotentRequest,
    response: &StoredResponse,
) -> QueryResult<()> {
    let key = (request.caller.as_str(), request.key.as_str());
    diesel::delete(idempotency_records::table.find(key)).execute(connection)?;
    let record = NewRecord {
        caller: key.0,
        key: key.1,
        request_fingerprint: &request.fingerprint,
        response_status: stored_status(response.status),
        response_body: &response.body,
        response_location: response.location.as_deref(),
        created_at: request.received_at,
        expires_at: request.expires_at,
        invalidates: stored_user_ids(&response.invalidates),
    };
    diesel::insert_into(idempotency_records::table).values(record).execute(connection)?;
    Ok(())
}

#[async_trait]
impl IdempotencyRepository for SqliteStore {
    async fn find_record(
        &self,
        caller: &str,
        key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, RepositoryError> {
        let (caller, key) = (caller.to_owned(), key.as_str().to_owned());
        self.read(move |connection| find_unexpired(connection, &caller, &key, now)).await
    }
}

impl SqliteStore {
    /// Deletes the idempotency records expired at `now`, at most `batch` at a time; returns
    /// how many.
    pub async fn purge_expired_idempotency_records(
        &self,
        batch: i64,
        now: OffsetDateTime,
    ) -> Result<usize, RepositoryError> {
        self.write(move |connection| {
            Ok(diesel::sql_query(
                "DELETE FROM idempotency_records WHERE rowid IN \
                 (SELECT rowid FROM idempotency_records WHERE expires_at <= ? LIMIT ?)",
            )
            .bind::<TimestamptzSqlite, _>(now)
            .bind::<BigInt, _>(batch)
            .execute(connection)?)
        })
        .await
    }
}
