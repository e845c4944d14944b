//! Diesel's view of the tables created by `migrations/` (declared together with the
//! PostgreSQL store's by [`adapters_sql_common::tables!`]), the column type SQLite lacks, and
//! what every repository of this store shares: the lookup of a user, the size of `IN` lists.

use diesel::deserialize::{self, FromSql};
use diesel::dsl::exists;
use diesel::expression::AsExpression;
use diesel::prelude::*;
use diesel::query_builder::QueryId;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::SqlType;
use diesel::sql_types::Text;
use diesel::sqlite::{Sqlite, SqliteValue};
use uuid::Uuid;

/// A UUID stored as TEXT in its hyphenated lower-case form (which sorts like its bytes, as
/// PostgreSQL sorts `uuid`). Read into [`Uuid`]; written through [`Id`].
#[derive(Debug, Clone, Copy, Default, SqlType, QueryId)]
#[diesel(sqlite_type(name = "Text"))]
pub struct UuidText;

impl FromSql<UuidText, Sqlite> for Uuid {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Sqlite>>::from_sql(value)?;
        Ok(Uuid::parse_str(&text)?)
    }
}

/// A UUID to bind to a [`UuidText`] column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, AsExpression)]
#[diesel(sql_type = UuidText)]
pub struct Id(pub Uuid);

impl ToSql<UuidText, Sqlite> for Id {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.hyphenated().to_string());
        Ok(IsNull::No)
    }
}

impl From<Uuid> for Id {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl From<domain::user::UserId> for Id {
    fn from(id: domain::user::UserId) -> Self {
        Self(id.as_uuid())
    }
}

/// `users.id`, `devices.id`, … are UUIDs as text.
type StoredUuid = UuidText;
/// Timestamps are text in UTC, as diesel writes them.
type StoredTimestamp = diesel::sql_types::TimestamptzSqlite;

adapters_sql_common::tables!();

/// `IN (…)` lists stay well below SQLite's limit on bound parameters.
pub(crate) const IDS_PER_QUERY: usize = 500;

/// Whether the user exists.
pub(crate) fn user_exists(connection: &mut SqliteConnection, user: domain::user::UserId) -> QueryResult<bool> {
    diesel::select(exists(users::table.find(Id::from(user)))).get_result(connection)
}

#[diesel::declare_sql_function]
extern "SQL" {
    /// SQLite's `lower` (ASCII only), to use the email index on `lower(email)`.
    fn lower(value: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

adapters_sql_common::row_columns!(pub);
adapters_sql_common::row_writes!(pub, Id);
