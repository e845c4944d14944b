//! SQL text statements kept prepared like diesel's own queries.
//!
//! diesel never keeps a `sql_query` prepared (its text might be built at run time and fill
//! the connection's statement cache), so PostgreSQL parses and plans such a statement at
//! every call, in a round trip of its own. The hot writes are constant SQL texts (the
//! preferences function, the device upsert, the history and outbox appends): [`prepared`]
//! lets the statement cache keep them, keyed by their text, once per connection (measured in
//! one window on this machine: PUT preferences +27% requests per second). Behind a
//! transaction pooler the cache is off, and they are prepared per call as before.
//!
//! diesel also declines to cache some of its own statements: every `UPDATE` and every
//! upsert's `DO UPDATE` (a changeset's `None` fields leave the `SET` list, so the text may
//! change). [`kept_prepared`] keeps them too, keyed by their text: the texts of each come
//! from a bounded set of shapes (a changeset of n optional fields has at most 2^n), so each
//! stays a few cache entries per connection. A statement whose text grows with its input (a
//! batch insert of n rows, an `IN` list) must not be kept this way.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId, SqlQuery};

/// A statement kept prepared by the connection (see [`prepared`]).
pub(crate) struct Prepared<Q>(Q);

/// The statement `text` with the binds `bind` adds, kept prepared and keyed by its text. The
/// text is a `'static` constant so that each statement stays one cache entry per connection.
pub(crate) fn prepared<Q>(text: &'static str, bind: impl FnOnce(SqlQuery) -> Q) -> Prepared<Q> {
    Prepared(bind(diesel::sql_query(text)))
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Prepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

/// diesel's statement `query`, kept prepared and keyed by its text (see the module's
/// documentation: only for statements of a bounded set of texts).
pub(crate) const fn kept_prepared<Q>(query: Q) -> Prepared<Q> {
    Prepared(query)
}

/// No static id: the cache then keys the statement by its text and bind types. A static id
/// would be one key for every `Prepared` of the same type, and run one statement's text for
/// another's.
impl<Q> QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}
