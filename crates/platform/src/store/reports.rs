//! Reports: usage totals per account and model, read from the daily aggregates the
//! settlements keep.

use sqlx::Row;

use super::{Result, Store};
use crate::money::Money;

/// Totals for one account and model over a period, from the daily aggregates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageTotal {
    pub account: String,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub completion_tokens: i64,
    pub cost: Money,
}

impl Store {
    /// Per account and model totals for the UTC days `from_day..=to_day` (days since the
    /// epoch), from the daily aggregates.
    pub async fn usage(&self, from_day: i64, to_day: i64) -> Result<Vec<UsageTotal>> {
        let rows = sqlx::query(
            "SELECT COALESCE(a.name, '(open access)') AS account, u.model AS model, \
             CAST(SUM(u.requests) AS BIGINT) AS requests, \
             CAST(SUM(u.prompt_tokens) AS BIGINT) AS prompt_tokens, \
             CAST(SUM(u.cached_tokens) AS BIGINT) AS cached_tokens, \
             CAST(SUM(u.reasoning_tokens) AS BIGINT) AS reasoning_tokens, \
             CAST(SUM(u.completion_tokens) AS BIGINT) AS completion_tokens, \
             CAST(SUM(u.cost) AS BIGINT) AS cost \
             FROM usage_daily u LEFT JOIN accounts a ON a.id = u.account_id \
             WHERE u.day >= $1 AND u.day <= $2 \
             GROUP BY a.name, u.model ORDER BY account, model",
        )
        .bind(from_day)
        .bind(to_day)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageTotal {
                    account: r.try_get("account")?,
                    model: r.try_get("model")?,
                    requests: r.try_get("requests")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    cached_tokens: r.try_get("cached_tokens")?,
                    reasoning_tokens: r.try_get("reasoning_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    cost: Money(r.try_get("cost")?),
                })
            })
            .collect()
    }
}
