//! The request log (`request_log`): recent requests' records, written in batches by
//! `crate::request_log`, read by `GET /admin/v1/requests`, pruned after the retention.

use sqlx::Row;

use super::{opt_str, Store, StoreError};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestRow {
    /// The row's own id (`req_...`).
    pub id: String,
    /// The request's `x-request-id` (a client may send its own: not unique).
    pub request_id: String,
    /// Unix milliseconds at the end of the request.
    pub at: i64,
    pub key_name: String,
    pub team: String,
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
    pub status: i64,
    pub duration_ms: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub spend_micro: i64,
    /// The access-log record (JSON).
    pub record: String,
    pub request_body: Option<String>,
    pub response_body: Option<String>,
}

impl RequestRow {
    /// What one row costs in memory while it waits for its batch.
    pub fn weight(&self) -> usize {
        256 + self.record.len()
            + self.request_body.as_ref().map_or(0, String::len)
            + self.response_body.as_ref().map_or(0, String::len)
    }
}

/// Filters of a listing (all optional).
#[derive(Debug, Default)]
pub struct RequestFilter {
    pub key_name: Option<String>,
    pub request_id: Option<String>,
    /// A requested model, or `provider/model` as sent upstream.
    pub model: Option<String>,
    /// An exact status, or a class (`2xx`..`5xx`).
    pub status: Option<(i64, i64)>,
    /// Rows strictly before this (at, id), newest first.
    pub before: Option<(i64, String)>,
}

const COLUMNS: &str = "id, request_id, at, key_name, team, model, provider, upstream_model, status, duration_ms, prompt_tokens, completion_tokens, spend_micro, record, request_body, response_body";

fn from_row(r: &sqlx::any::AnyRow) -> Result<RequestRow, StoreError> {
    Ok(RequestRow {
        id: r.try_get("id")?,
        request_id: r.try_get("request_id")?,
        at: r.try_get("at")?,
        key_name: r.try_get("key_name")?,
        team: r.try_get("team")?,
        model: r.try_get("model")?,
        provider: r.try_get("provider")?,
        upstream_model: r.try_get("upstream_model")?,
        status: r.try_get("status")?,
        duration_ms: r.try_get("duration_ms")?,
        prompt_tokens: r.try_get("prompt_tokens")?,
        completion_tokens: r.try_get("completion_tokens")?,
        spend_micro: r.try_get("spend_micro")?,
        record: r.try_get("record")?,
        request_body: opt_str(r, "request_body")?,
        response_body: opt_str(r, "response_body")?,
    })
}

/// Rows per INSERT (16 parameters each: well under SQLite's and PostgreSQL's limits).
const PER_STATEMENT: usize = 200;

/// A batch cut into statements of a few fixed sizes: `PER_STATEMENT` rows, then powers of two.
/// sqlx keeps each connection's prepared statements by their SQL, so a statement whose row count
/// followed the batch's was prepared anew for nearly every flush (12,000 instructions per row in
/// SQLite, issue 22's "all on" profile); with nine shapes each is prepared once.
fn statement_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= PER_STATEMENT {
            PER_STATEMENT
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

impl Store {
    /// Writes a batch in one transaction (a row written twice, after a timed-out attempt that
    /// did land, stays one).
    pub async fn add_requests(&self, rows: &[RequestRow]) -> Result<(), StoreError> {
        use std::fmt::Write;
        // SQLite gets anonymous `?` parameters: it looks each `$n` up by name in a list (and
        // sqlx asks each parameter's name back), linear per parameter, so a statement of 3,200
        // `$n` took a million instructions per row (issue 22's "all on" profile).
        let sqlite = self.kind == super::Kind::Sqlite;
        let mut tx = self.pool().begin().await?;
        for chunk in statement_chunks(rows) {
            let mut sql = format!("INSERT INTO request_log ({COLUMNS}) VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                let b = i * 16;
                sql.push('(');
                for c in 1..=16 {
                    if c > 1 {
                        sql.push_str(", ");
                    }
                    if sqlite {
                        sql.push('?');
                    } else {
                        let _ = write!(sql, "${}", b + c);
                    }
                }
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT (id) DO NOTHING");
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(&r.id)
                    .bind(&r.request_id)
                    .bind(r.at)
                    .bind(&r.key_name)
                    .bind(&r.team)
                    .bind(&r.model)
                    .bind(&r.provider)
                    .bind(&r.upstream_model)
                    .bind(r.status)
                    .bind(r.duration_ms)
                    .bind(r.prompt_tokens)
                    .bind(r.completion_tokens)
                    .bind(r.spend_micro)
                    .bind(&r.record)
                    .bind(&r.request_body)
                    .bind(&r.response_body);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Newest first, at most `limit`.
    pub async fn requests(
        &self,
        f: &RequestFilter,
        limit: usize,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM request_log WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if f.key_name.is_some() {
            sql.push_str(&format!(" AND key_name = {}", next()));
        }
        if f.request_id.is_some() {
            sql.push_str(&format!(" AND request_id = {}", next()));
        }
        if f.model.is_some() {
            let (a, b) = (next(), next());
            sql.push_str(&format!(
                " AND (model = {a} OR provider || '/' || upstream_model = {b})"
            ));
        }
        if f.status.is_some() {
            let (a, b) = (next(), next());
            sql.push_str(&format!(" AND status >= {a} AND status <= {b}"));
        }
        if f.before.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(" AND (at < {a} OR (at = {b} AND id < {c}))"));
        }
        sql.push_str(&format!(" ORDER BY at DESC, id DESC LIMIT {}", limit));
        let mut q = sqlx::query(&sql);
        if let Some(k) = &f.key_name {
            q = q.bind(k);
        }
        if let Some(r) = &f.request_id {
            q = q.bind(r);
        }
        if let Some(m) = &f.model {
            q = q.bind(m).bind(m);
        }
        if let Some((lo, hi)) = f.status {
            q = q.bind(lo).bind(hi);
        }
        if let Some((at, id)) = &f.before {
            q = q.bind(*at).bind(*at).bind(id);
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter().map(from_row).collect()
    }

    pub async fn request(&self, id: &str) -> Result<Option<RequestRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM request_log WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Deletes rows older than `before` (unix ms); how many went.
    pub async fn prune_requests(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM request_log WHERE at < $1")
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_few_statement_shapes_covering_every_row() {
        let mut shapes = std::collections::BTreeSet::new();
        for n in 0..=1000 {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = statement_chunks(&rows).collect();
            // Every row once, in order.
            assert_eq!(chunks.concat(), rows, "batch of {n}");
            for c in &chunks {
                assert!(c.len() == PER_STATEMENT || c.len().is_power_of_two());
                shapes.insert(c.len());
            }
        }
        assert_eq!(shapes.len(), 9, "{shapes:?}");
    }
}
