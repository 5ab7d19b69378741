//! The two backends behind one `Store`: opening a pool (SQLite created
//! private, WAL; PostgreSQL), the per-backend SQL fragments, and the
//! migrations (sqlx's migrator; databases of the old runner bridged).

use std::str::FromStr;

use sqlx::Row;

// Every SQL string of the store is assembled from constants in its files; values
// always travel as bind parameters. That is what `AssertSqlSafe` asserts.
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub type StoreResult<T> = Result<T, sqlx::Error>;

/// `(version, file, sql)` of each migration of a backend, from `migrations/`.
macro_rules! migrations {
    ($backend:literal: $($version:literal => $file:literal),* $(,)?) => {
        &[$(($version, $file, include_str!(concat!("../../../migrations/", $backend, "/", $file)))),*]
    };
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = migrations!("sqlite":
    1 => "0001_builds.sql",
    2 => "0002_agents.sql",
    3 => "0003_schedule_runs.sql",
    4 => "0004_secret_env.sql",
    5 => "0005_leases.sql",
    6 => "0006_idempotency.sql",
    7 => "0007_requires.sql",
    8 => "0008_api_tokens.sql",
    9 => "0009_leader.sql",
    10 => "0010_build_events.sql",
    11 => "0011_sessions.sql",
    12 => "0012_fencing.sql",
    13 => "0013_log_lines.sql",
    14 => "0014_log_errors.sql",
    15 => "0015_log_times.sql",
    16 => "0016_log_search.sql",
);
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = migrations!("postgres":
    1 => "0001_builds.sql",
    2 => "0002_agents.sql",
    3 => "0003_schedule_runs.sql",
    4 => "0004_secret_env.sql",
    5 => "0005_leases.sql",
    6 => "0006_idempotency.sql",
    7 => "0007_requires.sql",
    8 => "0008_api_tokens.sql",
    9 => "0009_leader.sql",
    10 => "0010_build_events.sql",
    11 => "0011_sessions.sql",
    12 => "0012_fencing.sql",
    13 => "0013_log_lines.sql",
    14 => "0014_log_errors.sql",
    15 => "0015_log_times.sql",
    16 => "0016_log_search.sql",
);

#[derive(Clone)]
pub(super) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Clone)]
pub struct Store {
    pub(super) backend: Backend,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens the database at `url` (`sqlite://path` or `postgres://...`),
    /// creating a SQLite file if missing, and applies pending migrations.
    pub async fn open(url: &str) -> StoreResult<Store> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // A short acquire timeout: during an outage a write fails fast and is
            // retried (with backoff) instead of waiting 30 s for a connection.
            Backend::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(std::time::Duration::from_secs(2))
                    .connect(url)
                    .await?,
            )
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?;
            // Created private (0600) before SQLite opens it; its -wal and
            // -shm files take the same mode.
            {
                use std::os::unix::fs::OpenOptionsExt;
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(options.get_filename());
            }
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(10));
            Backend::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?,
            )
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database URL `{url}`: use sqlite://PATH or postgres://...")
                    .into(),
            ));
        };
        let store = Store { backend };
        store.migrate().await?;
        Ok(store)
    }

    /// The database's clock in Unix milliseconds, as SQL: every agent reads
    /// the same time for leases and timestamps, whatever its own clock says.
    pub(super) fn now_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            Backend::Postgres(_) => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        }
    }

    /// The next fencing token, as SQL: a sequence on PostgreSQL; on
    /// SQLite (one writer at a time) one more than the largest so far.
    pub(super) fn next_fence_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "(SELECT COALESCE(MAX(fence), 0) + 1 FROM builds)",
            Backend::Postgres(_) => "nextval('build_fence')",
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The pool of the PostgreSQL backend (for LISTEN).
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.backend {
            Backend::Postgres(pool) => Some(pool),
            Backend::Sqlite(_) => None,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Applies pending migrations with sqlx's migrator: checksums of the
    /// applied ones are verified (an edited migration is an error, not a
    /// silent drift), and on PostgreSQL an advisory lock makes agents that
    /// start together take turns. A database created by the runner Piper
    /// had before (`schema_migrations`) is bridged first.
    async fn migrate(&self) -> StoreResult<()> {
        use sqlx::SqlSafeStr;
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        let list = match self.backend {
            Backend::Sqlite(_) => SQLITE_MIGRATIONS,
            Backend::Postgres(_) => POSTGRES_MIGRATIONS,
        };
        let migrations: Vec<Migration> = list
            .iter()
            .map(|(version, file, sql)| {
                let description = file.trim_end_matches(".sql").to_string();
                Migration::new(
                    *version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        self.bridge_old_migrations(&migrations).await?;
        let migrator = Migrator::with_migrations(migrations);
        on_backend!(self, pool => {
            migrator.run(pool).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
        })
    }

    /// Records the versions the old runner applied (`schema_migrations`) in
    /// sqlx's table with their checksums, then drops the old table; under
    /// the same advisory lock on PostgreSQL.
    async fn bridge_old_migrations(
        &self,
        migrations: &[sqlx::migrate::Migration],
    ) -> StoreResult<()> {
        use sqlx::migrate::Migrate;
        let exists = match self.backend {
            Backend::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            }
            Backend::Postgres(_) => {
                "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_migrations'"
            }
        };
        on_backend!(self, pool => {
            let mut conn = pool.acquire().await?;
            if sqlx::query(exists).fetch_all(&mut *conn).await?.is_empty() {
                return Ok(());
            }
            let mut tx = pool.begin().await?;
            if self.is_postgres() {
                sqlx::query("SELECT pg_advisory_xact_lock(7117001)").execute(&mut *tx).await?;
            }
            // Another agent may have bridged while this one waited.
            if sqlx::query(exists).fetch_all(&mut *tx).await?.is_empty() {
                return tx.commit().await;
            }
            tx.ensure_migrations_table("_sqlx_migrations").await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
            let applied = sqlx::query("SELECT version FROM schema_migrations").fetch_all(&mut *tx).await?;
            for row in &applied {
                let version: i64 = row.try_get("version")?;
                let Some(migration) = migrations.iter().find(|m| m.version == version) else {
                    continue;
                };
                sqlx::query(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                     VALUES ($1, $2, TRUE, $3, 0) ON CONFLICT (version) DO NOTHING",
                )
                .bind(version)
                .bind(migration.description.as_ref())
                .bind(migration.checksum.as_ref())
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DROP TABLE schema_migrations").execute(&mut *tx).await?;
            tx.commit().await
        })
    }

    /// Whether the database answers: one trivial query.
    pub async fn ping(&self) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
        })
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    /// A migration file that is not in the list would never run (it
    /// happened once): every file, in order, for both backends.
    #[test]
    fn every_migration_file_is_listed_in_order() {
        for (backend, listed) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            assert_eq!(files.len(), listed.len(), "{backend}: {files:?}");
            for (i, ((version, listed_file, sql), file)) in listed.iter().zip(&files).enumerate() {
                assert_eq!(*version, i as i64 + 1);
                assert_eq!(listed_file, file);
                let text = std::fs::read_to_string(dir.join(file)).unwrap();
                assert_eq!(&text, sql, "{backend}: migration {version} is not {file}");
            }
        }
    }
}
