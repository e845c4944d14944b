//! Idempotency records: claimed and written inside the transaction of the change they
//! belong to, and [`IdempotencyRepository`] for the fast check before expensive work.

use adapters_sql_common::rows::{stored_status, stored_user_ids};
use async_trait::async_trait;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use domain::idempotency::{
    IdempotencyConflict, IdempotencyKey, IdempotencyRecord, Idempotent, IdempotentRequest, IdempotentWrite,
    StoredResponse,
};
use domain::ports::{IdempotencyRepository, RepositoryError};
use futures_util::future::BoxFuture;
use time::OffsetDateTime;

use crate::PgStore;
use crate::errors::from_diesel;
use crate::prepared::kept_prepared;
use crate::rows::{RECORD, RecordRow};
use crate::schema::idempotency_records;
use crate::work::Unit;

/// An error inside a transaction that carries an idempotent write.
#[derive(Debug)]
pub(crate) enum TxError {
    /// The database failed.
    Database(diesel::result::Error),
    /// The key cannot be used now.
    Conflict(IdempotencyConflict),
    /// A stored value was invalid.
    Repository(RepositoryError),
}

impl From<diesel::result::Error> for TxError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(error)
    }
}

impl From<TxError> for RepositoryError {
    fn from(error: TxError) -> Self {
        match error {
            TxError::Database(error) => from_diesel(error),
            TxError::Conflict(conflict) => RepositoryError::Idempotency(conflict),
            TxError::Repository(error) => error,
        }
    }
}

/// The record of `caller`'s `key` unexpired at `now`, if any.
async fn find_unexpired(
    connection: &mut AsyncPgConnection,
    caller: &str,
    key: &str,
    now: OffsetDateTime,
) -> Result<Option<IdempotencyRecord>, TxError> {
    let row: Option<RecordRow> = idempotency_records::table
        .find((caller, key))
        .filter(idempotency_records::expires_at.gt(now))
        .select(RECORD)
        .get_result::<RecordRow>(connection)
        .await
        .optional()?;
    row.map(IdempotencyRecord::try_from).transpose().map_err(TxError::Repository)
}

impl PgStore {
    /// Runs `write` in one transaction under `idempotency`: a completed request's stored
    /// answer instead when there is one, else the write, with its answer recorded in the
    /// same transaction. The one skeleton of every idempotent write of this store.
    pub(crate) async fn idempotent_transaction<T: Send>(
        &self,
        idempotency: Option<IdempotentWrite<T>>,
        write: impl for<'c> FnOnce(&'c mut AsyncPgConnection) -> BoxFuture<'c, Result<T, TxError>> + Send,
    ) -> Result<Idempotent<T>, RepositoryError> {
        self.run::<_, TxError, _>(Unit::Transaction, async |connection| {
            if let Some(idempotent) = &idempotency
                && let Some(replay) = claim(connection, &idempotent.request).await?
            {
                return Ok(Idempotent::Replayed(replay));
            }
            let written = write(connection).await?;
            if let Some(idempotent) = idempotency {
                record(connection, &idempotent.request, &(idempotent.render)(&written)).await?;
            }
            Ok(Idempotent::Executed(written))
        })
        .await
    }
}

/// Claims `request`'s key for the current transaction. Returns the stored answer when the
/// request already ran; fails when another transaction holds the key or it was used for
/// another request. The lock is transaction-scoped: it is released at commit, when the
/// record written by [`record`] becomes visible.
async fn claim(
    connection: &mut AsyncPgConnection,
    request: &IdempotentRequest,
) -> Result<Option<StoredResponse>, TxError> {
    let locked: bool = diesel::select(
        sql::<Bool>("pg_try_advisory_xact_lock(hashtextextended(")
            .bind::<Text, _>(format!("{}\u{1f}{}", request.caller, request.key.as_str()))
            .sql(", 0))"),
    )
    .get_result(connection)
    .await?;
    if !locked {
        return Err(TxError::Conflict(IdempotencyConflict::InFlight));
    }
    match find_unexpired(connection, &request.caller, request.key.as_str(), request.received_at).await? {
        Some(record) => record.replay_for(&request.fingerprint).map(Some).map_err(TxError::Conflict),
        None => Ok(None),
    }
}

/// Stores the answer of `request` (replacing an expired record of the same key).
async fn record(
    connection: &mut AsyncPgConnection,
    request: &IdempotentRequest,
    response: &StoredResponse,
) -> QueryResult<()> {
    let invalidates = stored_user_ids(&response.invalidates);
    let values = (
        idempotency_records::caller.eq(&request.caller),
        idempotency_records::key.eq(request.key.as_str()),
        idempotency_records::request_fingerprint.eq(&request.fingerprint),
        idempotency_records::response_status.eq(stored_status(response.status)),
        idempotency_records::response_body.eq(&response.body),
        idempotency_records::response_location.eq(response.location.as_deref()),
        idempotency_records::created_at.eq(request.received_at),
        idempotency_records::expires_at.eq(request.expires_at),
        idempotency_records::invalidates.eq(&invalidates),
    );
    kept_prepared(
        diesel::insert_into(idempotency_records::table)
            .values(values)
            .on_conflict((idempotency_records::caller, idempotency_records::key))
            .do_update()
            .set(values),
    )
    .execute(connection)
    .await?;
    Ok(())
}

#[async_trait]
impl IdempotencyRepository for PgStore {
    async fn find_record(
        &self,
        caller: &str,
        key: &IdempotencyKey,
        now: OffsetDateTime,
    ) -> Result<Option<IdempotencyRecord>, RepositoryError> {
        self.run(Unit::Statements, async |connection| find_unexpired(connection, caller, key.as_str(), now).await).await
    }
}

impl PgStore {
    /// Deletes the idempotency records expired at `now`, at most `batch` at a time; returns
    /// how many.
    pub async fn purge_expired_idempotency_records(
        &self,
        batch: i64,
        now: OffsetDateTime,
    ) -> Result<usize, RepositoryError> {
        self.run(Unit::Statements, async |connection| {
            diesel::sql_query(
                "DELETE FROM idempotency_records WHERE ctid IN \
                 (SELECT ctid FROM idempotency_records WHERE expires_at <= $1 LIMIT $2)",
            )
            .bind::<Timestamptz, _>(now)
            .bind::<BigInt, _>(batch)
            .execute(connection)
            .await
        })
        .await
    }
}
