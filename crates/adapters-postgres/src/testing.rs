//! Test support (feature `test-support`): one fresh database per test, cloned from a
//! template that is migrated once per migration change.
//!
//! The server comes from `TEST_DATABASE_URL`, else `DATABASE_URL`, else the local
//! `postgres://postgres@127.0.0.1:5432/postgres`. The role must be allowed to create
//! databases. Databases are dropped `WITH (FORCE)` when the [`TestDatabase`] is dropped.

use diesel::sql_types::{Bool, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use domain::error::BoxError;

use crate::pool::{self, PgPool, PoolSettings};

const TEMPLATE_LOCK_KEY: i64 = 0x7573_6572_7376_6331; // "usersvc1"

/// The admin URL of the test server.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .ok()
        .filter(|url| url.starts_with("postgres://") || url.starts_with("postgresql://"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |index| index + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[derive(QueryableByName)]
struct TemplateState {
    #[diesel(sql_type = Bool)]
    ready: bool,
}

/// A database of its own for one test.
pub struct TestDatabase {
    name: String,
    url: String,
    server_url: String,
    pool: PgPool,
}

impl TestDatabase {
    /// Creates a migrated, empty database. Needs tokio's multi-thread runtime.
    pub async fn create() -> Result<Self, BoxError> {
        Self::create_on(server_url()).await
    }

    /// Creates a migrated, empty database on the server of `server_url` (an admin URL, as
    /// [`server_url`] is).
    pub async fn create_on(server_url: String) -> Result<Self, BoxError> {
        let template = format!("user_service_template_{}", env!("MIGRATIONS_FINGERPRINT"));
        ensure_template(&server_url, &template).await?;

        Self::create_from(server_url, &format!(r#"TEMPLATE "{template}""#)).await
    }

    /// Creates a database with no migration applied, as a new deployment finds it.
    pub async fn create_empty() -> Result<Self, BoxError> {
        Self::create_from(server_url(), "").await
    }

    /// Creates a database of a new name with `options` (its template).
    async fn create_from(server_url: String, options: &str) -> Result<Self, BoxError> {
        let name = format!("user_service_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = AsyncPgConnection::establish(&server_url).await?;
        admin.batch_execute(&format!(r#"CREATE DATABASE "{name}" {options}"#)).await?;
        let url = with_database(&server_url, &name);
        let pool = pool::build(&PoolSettings { max_size: 8, ..PoolSettings::new(url.clone()) })?;
        Ok(Self { name, url, server_url, pool })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on the database, for direct checks of what the service stored.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs a query returning one `bigint` (e.g. a `count(*)`), for assertions.
    pub async fn count(&self, query: &str) -> Result<i64, BoxError> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            count: i64,
        }
        let mut connection = self.pool.get().await?;
        let row: Count = sql_query(query).get_result(&mut connection).await?;
        Ok(row.count)
    }

    /// Runs a query returning one `text` column named `value`, for assertions.
    pub async fn text(&self, query: &str) -> Result<String, BoxError> {
        #[derive(QueryableByName)]
        struct Text {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        let mut connection = self.pool.get().await?;
        let row: Text = sql_query(query).get_result(&mut connection).await?;
        Ok(row.value)
    }
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let statement = format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name);
        let server_url = self.server_url.clone();
        // Drop runs outside async context (or during a panic): use a private runtime.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async {
                if let Ok(mut admin) = AsyncPgConnection::establish(&server_url).await {
                    let _ = admin.batch_execute(&statement).await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Builds the template once: the first process to take the advisory lock migrates it and
/// marks it as a template; the others wait on the lock and find it ready.
async fn ensure_template(server_url: &str, template: &str) -> Result<(), BoxError> {
    let mut admin = AsyncPgConnection::establish(server_url).await?;
    let is_ready = async |admin: &mut AsyncPgConnection| -> Result<bool, BoxError> {
        let rows: Vec<TemplateState> = sql_query("SELECT datistemplate AS ready FROM pg_database WHERE datname = $1")
            .bind::<Text, _>(template)
            .load(admin)
            .await?;
        Ok(rows.iter().any(|row| row.ready))
    };
    if is_ready(&mut admin).await? {
        return Ok(());
    }
    admin.batch_execute(&format!("SELECT pg_advisory_lock({TEMPLATE_LOCK_KEY})")).await?;
    let result = async {
        if is_ready(&mut admin).await? {
            return Ok(());
        }
        // A half-built template from an interrupted run is rebuilt.
        admin.batch_execute(&format!(r#"DROP DATABASE IF EXISTS "{template}" WITH (FORCE)"#)).await?;
        admin.batch_execute(&format!(r#"CREATE DATABASE "{template}""#)).await?;
        {
            let pool = pool::build(&PoolSettings::new(with_database(server_url, template)))?;
            crate::migrations::run_pending(&pool).await?;
            pool.close();
        }
        admin.batch_execute(&format!(r#"ALTER DATABASE "{template}" WITH IS_TEMPLATE true"#)).await?;
        Ok::<_, BoxError>(())
    }
    .await;
    admin.batch_execute(&format!("SELECT pg_advisory_unlock({TEMPLATE_LOCK_KEY})")).await?;
    result
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced_and_parameters_kept() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
