//! The spend ledger (`spend_ledger`): hourly totals per principal and model.

use sqlx::Row;

use super::{Store, StoreError};

/// One hour's totals of one principal and model (what a flush adds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerRow {
    pub hour: i64,
    pub principal: String,
    pub team: String,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub spend_micro: i64,
}

/// How `/admin/v1/spend` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Team,
    Model,
    Day,
    Hour,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::Key => "principal",
            GroupBy::Team => "team",
            GroupBy::Model => "model",
            GroupBy::Day => "hour / 24",
            GroupBy::Hour => "hour",
        }
    }
}

/// One group of a spend report.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendGroup {
    /// The principal, team, model, the day (Unix days) or the hour (Unix hours).
    pub group: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub spend_micro: i64,
}

impl Store {
    /// Adds `rows` to the ledger in one transaction (each row added to its hour's totals).
    pub async fn add_to_ledger(&self, rows: &[LedgerRow]) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO spend_ledger (hour, principal, team, model, requests, prompt_tokens, completion_tokens, spend_micro) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (hour, principal, model) DO UPDATE SET \
                 team = excluded.team, requests = spend_ledger.requests + excluded.requests, \
                 prompt_tokens = spend_ledger.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = spend_ledger.completion_tokens + excluded.completion_tokens, \
                 spend_micro = spend_ledger.spend_micro + excluded.spend_micro",
            )
            .bind(r.hour)
            .bind(&r.principal)
            .bind(&r.team)
            .bind(&r.model)
            .bind(r.requests)
            .bind(r.prompt_tokens)
            .bind(r.completion_tokens)
            .bind(r.spend_micro)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A principal's spend from `since_hour` on (micro-dollars).
    pub async fn spend_since(&self, principal: &str, since_hour: i64) -> Result<i64, StoreError> {
        let row = sqlx::query(
            // SUM of BIGINT is NUMERIC on PostgreSQL: cast back to what both drivers decode.
            "SELECT CAST(COALESCE(SUM(spend_micro), 0) AS BIGINT) AS s FROM spend_ledger WHERE principal = $1 AND hour >= $2",
        )
        .bind(principal)
        .bind(since_hour)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<i64, _>("s")?)
    }

    /// Totals per group between two hours (`to` excluded), largest spend first.
    pub async fn spend_report(
        &self,
        by: GroupBy,
        from_hour: i64,
        to_hour: i64,
    ) -> Result<Vec<SpendGroup>, StoreError> {
        let col = by.column();
        let rows = sqlx::query(&format!(
            "SELECT CAST({col} AS TEXT) AS g, CAST(SUM(requests) AS BIGINT) AS r, \
             CAST(SUM(prompt_tokens) AS BIGINT) AS p, CAST(SUM(completion_tokens) AS BIGINT) AS c, \
             CAST(SUM(spend_micro) AS BIGINT) AS s FROM spend_ledger \
             WHERE hour >= $1 AND hour < $2 GROUP BY {col} ORDER BY s DESC, g"
        ))
        .bind(from_hour)
        .bind(to_hour)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SpendGroup {
                    group: row.try_get("g")?,
                    requests: row.try_get("r")?,
                    prompt_tokens: row.try_get("p")?,
                    completion_tokens: row.try_get("c")?,
                    spend_micro: row.try_get("s")?,
                })
            })
            .collect()
    }
}
