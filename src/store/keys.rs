//! Virtual API keys issued through the admin API (`api_keys`): only their SHA-256 is stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::audit::AuditEntry;
use super::{finish, opt_i64, opt_str, Store, StoreError};
use crate::config::auth::BudgetPeriod;

/// What a key may do, kept as JSON (`spec`): the TOML key's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySpec {
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    #[serde(default)]
    pub budget_usd: Option<f64>,
    #[serde(default)]
    pub budget_period: BudgetPeriod,
    /// MCP/A2A tool allowlist (names as `/mcp` lists them; `*` wildcards).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Guardrail profile name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    /// `sha256:<hex>`.
    pub hash: String,
    pub key_prefix: String,
    pub owner: Option<String>,
    pub team: Option<String>,
    pub spec: KeySpec,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
}

const COLUMNS: &str =
    "id, name, hash, key_prefix, owner, team, spec, expires_at, created_at, updated_at, revoked_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<StoredKey, StoreError> {
    let spec: String = row.try_get("spec")?;
    Ok(StoredKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        hash: row.try_get("hash")?,
        key_prefix: row.try_get("key_prefix")?,
        owner: opt_str(row, "owner")?,
        team: opt_str(row, "team")?,
        spec: serde_json::from_str(&spec)
            .map_err(|e| StoreError::Other(format!("api_keys.spec: {e}")))?,
        expires_at: opt_i64(row, "expires_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        revoked_at: opt_i64(row, "revoked_at")?,
    })
}

impl Store {
    /// Every stored key, revoked ones included, oldest first.
    pub async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn insert_key(&self, k: &StoredKey, audit: &AuditEntry) -> Result<(), StoreError> {
        let spec = serde_json::to_string(&k.spec).expect("serializes");
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&k.id)
        .bind(&k.name)
        .bind(&k.hash)
        .bind(&k.key_prefix)
        .bind(&k.owner)
        .bind(&k.team)
        .bind(spec)
        .bind(k.expires_at)
        .bind(k.created_at)
        .bind(k.updated_at)
        .bind(k.revoked_at)
        .execute(&mut *tx)
        .await?;
        finish(tx, 1, audit).await.map(|_| ())
    }

    /// Writes a key's changeable fields; `false` when it does not exist.
    pub async fn update_key(&self, k: &StoredKey, audit: &AuditEntry) -> Result<bool, StoreError> {
        let spec = serde_json::to_string(&k.spec).expect("serializes");
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET name = $1, owner = $2, team = $3, spec = $4, expires_at = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(&k.name)
        .bind(&k.owner)
        .bind(&k.team)
        .bind(spec)
        .bind(k.expires_at)
        .bind(k.updated_at)
        .bind(&k.id)
        .execute(&mut *tx)
        .await?;
        finish(tx, done.rows_affected(), audit).await
    }

    /// Revokes a live key; `false` when there is none with this id.
    pub async fn revoke_key(
        &self,
        id: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1, updated_at = $2 WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(at)
        .bind(at)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        finish(tx, done.rows_affected(), audit).await
    }
}
