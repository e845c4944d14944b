//! Units of work on one connection, run as the pooler in front of PostgreSQL needs
//! ([`Pooler`](crate::pool::Pooler)): behind a transaction pooler, each in a transaction of
//! its own that first sets the statement timeout for itself.

use std::future::Future;

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use domain::ports::RepositoryError;

use crate::errors::from_diesel;
use crate::idempotency::TxError;

/// An async closure over a connection whose future is `Send`, as diesel-async's
/// `transaction` asks of its callback: `AsyncFnOnce` alone cannot say so (the same helper as
/// diesel-async's own, which it does not export).
pub(crate) trait Work<T, R>: AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as Work<T, R>>::Fut {
    /// The future of a call.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> Work<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// A failure of a unit of work: a query's, or a transaction's.
pub(crate) trait WorkError: From<diesel::result::Error> + Send {
    /// The failure as the domain sees it.
    fn into_repository(self) -> RepositoryError;
}

impl WorkError for diesel::result::Error {
    fn into_repository(self) -> RepositoryError {
        from_diesel(self)
    }
}

impl WorkError for TxError {
    fn into_repository(self) -> RepositoryError {
        self.into()
    }
}

/// How a unit of work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Its statements as they are (each its own transaction), unless a transaction pooler
    /// asks for a transaction around them.
    ///
    /// A writing statement's rows must be read to the end (`get_results`, never `get_result`
    /// or `first`): outside a transaction PostgreSQL commits a statement at the protocol's
    /// `Sync`, after its rows and `CommandComplete` were sent, and `get_result` returns at the
    /// first row and drops the rest, with any failure of that commit (a deferred trigger
    /// raising, the backend terminated): the write would be acknowledged and never stored.
    /// Reading to the end waits for the statement's end, so such a failure is the caller's
    /// error (`no_write_is_acknowledged_when_its_commit_fails`).
    Statements,
    /// In one transaction.
    Transaction,
}

/// Runs `work` on `connection` as `unit` says; in a transaction whose first statement is
/// `setup` whenever there is one (see [`Pooler`](crate::pool::Pooler)).
pub(crate) async fn run_on<R, E, F>(
    connection: &mut AsyncPgConnection,
    setup: Option<&str>,
    unit: Unit,
    work: F,
) -> Result<R, E>
where
    R: Send,
    E: From<diesel::result::Error> + Send,
    for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> Result<R, E>
        + Work<&'r mut AsyncPgConnection, Result<R, E>, Fut: Send>
        + Send,
{
    if setup.is_none() && unit == Unit::Statements {
        return work(connection).await;
    }
    connection
        .transaction::<R, E, _>(async move |connection| {
            if let Some(setup) = setup {
                connection.batch_execute(setup).await?;
            }
            work(connection).await
        })
        .await
}
