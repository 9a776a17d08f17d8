//! The control plane's store (`DATABASE_URL`): SQLite for one node (`sqlite://path`), PostgreSQL
//! for several (`postgres://...`), one code path through sqlx's `Any` driver with portable SQL
//! (text ids, BIGINT unix milliseconds, JSON as text). Migrations are embedded and applied at
//! start (`inference-gateway migrate` too).
//!
//! Nothing here is on the request path: the admin API writes through it, and every replica
//! keeps an in-memory snapshot (`crate::control`) that a background task refreshes when the
//! `changes` counter moves.

pub mod audit;
pub mod catalog;
pub mod keys;
pub mod ledger;
pub mod requests;
pub mod state;
pub mod teams;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};

/// The schema, in order. A migration is never edited once released: add a new one.
const MIGRATIONS: [(i64, &str, &str); 7] = [
    (1, "keys", include_str!("../../migrations/0001_keys.sql")),
    (
        2,
        "ledger",
        include_str!("../../migrations/0002_ledger.sql"),
    ),
    (3, "audit", include_str!("../../migrations/0003_audit.sql")),
    (4, "teams", include_str!("../../migrations/0004_teams.sql")),
    (
        5,
        "catalog",
        include_str!("../../migrations/0005_catalog.sql"),
    ),
    (
        6,
        "request_log",
        include_str!("../../migrations/0006_request_log.sql"),
    ),
    (7, "state", include_str!("../../migrations/0007_state.sql")),
];

#[derive(Debug)]
pub enum StoreError {
    /// A unique constraint (a live key's name) refused the write.
    Duplicate,
    Other(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Duplicate => f.write_str("duplicate"),
            StoreError::Other(e) => f.write_str(e),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Duplicate,
            _ => StoreError::Other(e.to_string()),
        }
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    pub fn of(url: &str) -> Option<Kind> {
        if url.starts_with("sqlite:") {
            Some(Kind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Kind::Postgres)
        } else {
            None
        }
    }
}

/// Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    pub kind: Kind,
    /// For PostgreSQL's change notifications (a connection of their own).
    url: std::sync::Arc<str>,
}

/// The channel every admin write notifies on PostgreSQL (`LISTEN igw_changes`).
pub const CHANGES_CHANNEL: &str = "igw_changes";

/// A SQLite URL that creates its file (`mode=rwc`) unless the user chose a mode.
fn connect_url(url: &str, kind: Kind) -> String {
    if kind == Kind::Sqlite && !url.contains("mode=") {
        let sep = if url.contains('?') { '&' } else { '?' };
        return format!("{url}{sep}mode=rwc");
    }
    url.to_string()
}

/// The URL with any password replaced, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// Connects (lazily: connections are made by the runtime that first uses them, so a pool
    /// opened during start-up is not tied to a runtime that is gone).
    pub fn connect_lazy(url: &str) -> Result<Store, String> {
        sqlx::any::install_default_drivers();
        let kind = Kind::of(url).ok_or_else(|| {
            format!(
                "DATABASE_URL {}: expected sqlite://path or postgres://...",
                redacted(url)
            )
        })?;
        let pool = AnyPoolOptions::new()
            .max_connections(if kind == Kind::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(2))
            .idle_timeout(Some(Duration::from_secs(60)))
            .connect_lazy(&connect_url(url, kind))
            .map_err(|e| format!("DATABASE_URL {}: {e}", redacted(url)))?;
        Ok(Store {
            pool,
            kind,
            url: url.into(),
        })
    }

    /// Applies the embedded migrations not yet applied.
    pub async fn migrate(&self) -> Result<(), String> {
        if self.kind == Kind::Sqlite {
            // Readers do not wait for the writer; the old and new process of an upgrade share
            // the file.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&self.pool)
                .await
                .map_err(|e| format!("store: {e}"))?;
        }
        let migrations: Vec<Migration> = MIGRATIONS
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    Cow::Borrowed(*d),
                    MigrationType::Simple,
                    Cow::Borrowed(*sql),
                    false,
                )
            })
            .collect();
        let migrator = Migrator {
            migrations: Cow::Owned(migrations),
            ..Migrator::DEFAULT
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| format!("store migrations: {e}"))
    }

    /// That the store opens and can be written (`-t`): a table created in a transaction that
    /// is rolled back (DDL is transactional in both SQLite and PostgreSQL), so nothing stays.
    pub async fn check_writable(&self) -> Result<(), String> {
        let mut tx = self.pool.begin().await.map_err(|e| format!("store: {e}"))?;
        sqlx::query("CREATE TABLE igw_write_check (x INTEGER)")
            .execute(&mut *tx)
            .await
            .map_err(|e| format!("store is not writable: {e}"))?;
        tx.rollback().await.map_err(|e| format!("store: {e}"))
    }

    /// A relative SQLite path (`sqlite://igw.db`): resolved against the working directory,
    /// which a daemon changes.
    pub fn relative_sqlite(url: &str) -> bool {
        Kind::of(url) == Some(Kind::Sqlite) && {
            let path = url
                .trim_start_matches("sqlite:")
                .trim_start_matches("//")
                .split('?')
                .next()
                .unwrap_or("");
            !path.starts_with('/') && path != ":memory:"
        }
    }

    /// The change counter every replica polls.
    pub async fn version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT seq FROM changes WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Waits for change notifications (PostgreSQL only) and calls `changed` for each, and
    /// after every reconnection (a notification may have been missed meanwhile). Returns only
    /// if the store is not PostgreSQL.
    pub async fn listen_for_changes(&self, changed: impl Fn()) {
        if self.kind != Kind::Postgres {
            return;
        }
        loop {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect(&self.url).await?;
                l.listen(CHANGES_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let mut l = match listener.await {
                Ok(l) => l,
                Err(e) => {
                    log::debug!("store: LISTEN failed ({e}); polling meanwhile");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            changed();
            loop {
                match l.try_recv().await {
                    Ok(Some(_)) => changed(),
                    // The connection was lost (and is made again on the next call).
                    Ok(None) => changed(),
                    Err(e) => {
                        log::debug!("store: LISTEN connection failed ({e})");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Ends a write that changes at most one row: when it changed one, bumps the change counter,
/// records the audit entry and commits (`true`); otherwise rolls back (`false`).
pub(crate) async fn finish(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    rows_affected: u64,
    audit: &audit::AuditEntry,
) -> Result<bool, StoreError> {
    if rows_affected == 0 {
        return Ok(false);
    }
    bump(&mut tx, audit).await?;
    tx.commit().await?;
    Ok(true)
}

/// Bumps the change counter inside a write's transaction, and records who made the change.
pub(crate) async fn bump(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    audit: &audit::AuditEntry,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE changes SET seq = seq + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    if tx.backend_name() == "PostgreSQL" {
        // Delivered at commit to every replica's LISTEN: they reload at once rather than at
        // their next poll.
        sqlx::query(&format!("SELECT pg_notify('{CHANGES_CHANNEL}', '')"))
            .execute(&mut **tx)
            .await?;
    }
    audit::record(tx, audit).await
}

pub(crate) fn opt_i64(row: &AnyRow, col: &str) -> Result<Option<i64>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

pub(crate) fn opt_str(row: &AnyRow, col: &str) -> Result<Option<String>, StoreError> {
    Ok(row.try_get::<Option<String>, _>(col)?)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(Kind::of("sqlite://a.db"), Some(Kind::Sqlite));
        assert_eq!(Kind::of("postgres://u:p@h/db"), Some(Kind::Postgres));
        assert_eq!(Kind::of("mysql://h"), None);
        assert!(Store::relative_sqlite("sqlite://igw.db"));
        assert!(Store::relative_sqlite("sqlite:igw.db?mode=rwc"));
        assert!(!Store::relative_sqlite("sqlite:///var/lib/igw/igw.db"));
        assert!(!Store::relative_sqlite("postgres://h/db"));
        assert_eq!(
            connect_url("sqlite://a.db", Kind::Sqlite),
            "sqlite://a.db?mode=rwc"
        );
        assert_eq!(
            redacted("postgres://igw:s3cret@db:5432/igw"),
            "postgres://igw:***@db:5432/igw"
        );
        assert!(!redacted("postgres://igw:s3cret@db/igw").contains("s3cret"));
    }

    #[tokio::test]
    async fn sqlite_migrates_once_and_counts_changes() {
        let dir = std::env::temp_dir().join(format!("igw-store-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("s.db").display());
        let s = Store::connect_lazy(&url).unwrap();
        s.check_writable().await.unwrap();
        s.migrate().await.unwrap();
        s.migrate().await.unwrap();
        s.check_writable().await.unwrap();
        assert_eq!(s.version().await.unwrap(), 0);
        let mut tx = s.pool.begin().await.unwrap();
        let entry =
            audit::AuditEntry::new("admin-key", "127.0.0.1", "key.create", "key_1", "{}".into());
        bump(&mut tx, &entry).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(s.version().await.unwrap(), 1);
        let page = s.audit(10, None).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].action, "key.create");
        s.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
