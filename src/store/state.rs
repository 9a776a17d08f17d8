//! Caller state (`kv_state`): values with an expiry under a namespace, for `crate::kv` when a
//! store is configured (stored Responses).

use sqlx::Row;

use super::{now_ms, Store, StoreError};

impl Store {
    /// Writes (or replaces) values that expire after `ttl_ms`.
    pub async fn put_state(
        &self,
        namespace: &str,
        items: &[(String, std::sync::Arc<str>)],
        ttl_ms: i64,
    ) -> Result<(), StoreError> {
        let expires = now_ms().saturating_add(ttl_ms);
        let mut tx = self.pool().begin().await?;
        for (k, v) in items {
            sqlx::query(
                "INSERT INTO kv_state (namespace, key, value, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
            )
            .bind(namespace)
            .bind(k)
            .bind(v.as_ref())
            .bind(expires)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The live values of `keys`, in order.
    pub async fn get_state(
        &self,
        namespace: &str,
        keys: &[&str],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut out = vec![None; keys.len()];
        if keys.is_empty() {
            return Ok(out);
        }
        let marks: Vec<String> = (0..keys.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT key, value FROM kv_state WHERE namespace = $1 AND expires_at > $2 AND key IN ({})",
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(namespace).bind(now_ms());
        for k in keys {
            q = q.bind(*k);
        }
        for row in q.fetch_all(self.pool()).await? {
            let k: String = row.try_get("key")?;
            if let Some(i) = keys.iter().position(|w| *w == k) {
                out[i] = Some(row.try_get("value")?);
            }
        }
        Ok(out)
    }

    /// Removes a value; how many rows went (0 or 1).
    pub async fn delete_state(&self, namespace: &str, key: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM kv_state WHERE namespace = $1 AND key = $2")
            .bind(namespace)
            .bind(key)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Removes expired values; how many went.
    pub async fn prune_state(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM kv_state WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}
