//! The audit log (`audit_log`): every change made through the admin API, written in the same
//! transaction as the change (a change is never without its record).

use sqlx::Row;

use super::{now_ms, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub client: String,
    pub action: String,
    pub target: String,
    /// What changed, as JSON (never a secret).
    pub detail: String,
}

impl AuditEntry {
    pub fn new(actor: &str, client: &str, action: &str, target: &str, detail: String) -> Self {
        AuditEntry {
            id: format!("aud_{}", uuid::Uuid::new_v4().simple()),
            at: now_ms(),
            actor: actor.into(),
            client: client.into(),
            action: action.into(),
            target: target.into(),
            detail,
        }
    }
}

pub(crate) async fn record(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    e: &AuditEntry,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor, client, action, target, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&e.id)
    .bind(e.at)
    .bind(&e.actor)
    .bind(&e.client)
    .bind(&e.action)
    .bind(&e.target)
    .bind(&e.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Newest first; `before`: the (at, id) of the last entry of the previous page.
    pub async fn audit(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let (at, id) = before.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(
            "SELECT id, at, actor, client, action, target, detail FROM audit_log \
             WHERE at < $1 OR (at = $2 AND id < $3) ORDER BY at DESC, id DESC LIMIT $4",
        )
        .bind(at)
        .bind(at)
        .bind(id)
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    client: r.try_get("client")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}
