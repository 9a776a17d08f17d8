//! Teams (`teams`): limits and a budget their keys share.

use sqlx::Row;

use super::audit::AuditEntry;
use super::keys::KeySpec;
use super::{finish, opt_i64, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct StoredTeam {
    pub id: String,
    pub name: String,
    /// The limits and budget (a key's spec; `models` and `tools` unused).
    pub spec: KeySpec,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
}

const COLUMNS: &str = "id, name, spec, created_at, updated_at, deleted_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<StoredTeam, StoreError> {
    let spec: String = row.try_get("spec")?;
    Ok(StoredTeam {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Other(format!("teams.spec: {e}")))?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        deleted_at: opt_i64(row, "deleted_at")?,
    })
}

impl Store {
    /// Every team, deleted ones included, oldest first.
    pub async fn teams(&self) -> Result<Vec<StoredTeam>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM teams ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn insert_team(&self, t: &StoredTeam, audit: &AuditEntry) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&t.spec).expect("serializes");
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO teams ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&t.id)
        .bind(&t.name)
        .bind(spec)
        .bind(t.created_at)
        .bind(t.updated_at)
        .bind(t.deleted_at)
        .execute(&mut *tx)
        .await?;
        finish(tx, 1, audit).await.map(|_| ())
    }

    /// Writes a live team's limits; `false` when there is none with this id.
    pub async fn update_team(
        &self,
        t: &StoredTeam,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let spec = serde_json::to_string(&t.spec).expect("serializes");
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE teams SET spec = $1, updated_at = $2 WHERE id = $3 AND deleted_at IS NULL",
        )
        .bind(spec)
        .bind(t.updated_at)
        .bind(&t.id)
        .execute(&mut *tx)
        .await?;
        finish(tx, done.rows_affected(), audit).await
    }

    /// Deletes a live team (kept for the ledger and audit); `false` when there is none.
    pub async fn delete_team(
        &self,
        id: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE teams SET deleted_at = $1, updated_at = $2 WHERE id = $3 AND deleted_at IS NULL",
        )
        .bind(at)
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        finish(tx, done.rows_affected(), audit).await
    }

    /// A team's spend from `since_hour` on (micro-dollars), whichever of its keys spent it.
    pub async fn team_spend_since(&self, team: &str, since_hour: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(spend_micro), 0) AS BIGINT) AS s FROM spend_ledger WHERE team = $1 AND hour >= $2",
        )
        .bind(team)
        .bind(since_hour)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<i64, _>("s")?)
    }
}
