//! The catalog (`catalog`): providers, models and backends added through the admin API, each a
//! JSON document. Every replica reads the whole table into its router (`crate::catalog`).

use serde_json::{Map, Value};
use sqlx::Row;

use super::audit::AuditEntry;
use super::{finish, opt_str, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Provider,
    Model,
    Backend,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Provider => "provider",
            Kind::Model => "model",
            Kind::Backend => "backend",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "provider" => Some(Kind::Provider),
            "model" => Some(Kind::Model),
            "backend" => Some(Kind::Backend),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub kind: Kind,
    /// A provider's or model's name; a backend's id.
    pub name: String,
    /// A backend's provider or model.
    pub parent: Option<String>,
    pub doc: Map<String, Value>,
    /// The API key (providers and backends); never returned by the admin API.
    pub secret: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, kind, name, parent, doc, secret, created_at, updated_at";

fn from_row(row: &sqlx::any::AnyRow) -> Result<Option<Entry>, StoreError> {
    let kind: String = row.try_get("kind")?;
    // A kind a newer release added: not this one's to serve.
    let Some(kind) = Kind::parse(&kind) else {
        return Ok(None);
    };
    let doc: String = row.try_get("doc")?;
    Ok(Some(Entry {
        id: row.try_get("id")?,
        kind,
        name: row.try_get("name")?,
        parent: opt_str(row, "parent")?,
        doc: serde_json::from_str(&doc)
            .map_err(|e| StoreError::Other(format!("catalog.doc: {e}")))?,
        secret: opt_str(row, "secret")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

impl Store {
    /// The whole catalog, oldest first (backends keep the order they were added in).
    pub async fn catalog(&self) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM catalog ORDER BY created_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.extend(from_row(r)?);
        }
        Ok(out)
    }

    pub async fn insert_entry(&self, e: &Entry, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!(
            "INSERT INTO catalog ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&e.id)
        .bind(e.kind.as_str())
        .bind(&e.name)
        .bind(&e.parent)
        .bind(Value::Object(e.doc.clone()).to_string())
        .bind(&e.secret)
        .bind(e.created_at)
        .bind(e.updated_at)
        .execute(&mut *tx)
        .await?;
        finish(tx, 1, audit).await.map(|_| ())
    }

    /// Writes an entry's document and key; `false` when there is none with this id.
    pub async fn update_entry(&self, e: &Entry, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done =
            sqlx::query("UPDATE catalog SET doc = $1, secret = $2, updated_at = $3 WHERE id = $4")
                .bind(Value::Object(e.doc.clone()).to_string())
                .bind(&e.secret)
                .bind(e.updated_at)
                .bind(&e.id)
                .execute(&mut *tx)
                .await?;
        finish(tx, done.rows_affected(), audit).await
    }

    /// Deletes an entry and its backends; `false` when there is none with this id.
    pub async fn delete_entry(&self, id: &str, audit: &AuditEntry) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("DELETE FROM catalog WHERE id = $1 OR parent = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        finish(tx, done.rows_affected(), audit).await
    }
}
