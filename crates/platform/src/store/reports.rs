//! Reports: usage totals per account and model (and per day, for one account's chart),
//! read from the daily aggregates the settlements keep; and an account's latest usage
//! rows, the ledger's own record of each request.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store};
use crate::money::Money;
use tokenfab_wire::usage::TokenUsage;

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

/// One account's totals for one model on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DailyUsage {
    /// Days since the epoch.
    pub day: i64,
    pub total: UsageTotal,
}

/// One settled request, as its usage row has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    pub request_id: String,
    pub model: String,
    /// The first characters of the key it came with (`None`: open access or a key since
    /// removed from the database).
    pub key_prefix: Option<String>,
    pub created_at: i64,
    pub tokens: TokenUsage,
    pub cost: Money,
    /// [`Outcome::as_str`](super::Outcome::as_str).
    pub status: String,
    /// [`Source::as_str`](super::Source::as_str).
    pub source: String,
}

/// The sums every report selects, by the names [`total`] reads.
const SUMS: &str = "COALESCE(a.name, '(open access)') AS account, u.model AS model, \
     CAST(SUM(u.requests) AS BIGINT) AS requests, \
     CAST(SUM(u.prompt_tokens) AS BIGINT) AS prompt_tokens, \
     CAST(SUM(u.cached_tokens) AS BIGINT) AS cached_tokens, \
     CAST(SUM(u.reasoning_tokens) AS BIGINT) AS reasoning_tokens, \
     CAST(SUM(u.completion_tokens) AS BIGINT) AS completion_tokens, \
     CAST(SUM(u.cost) AS BIGINT) AS cost";

fn total(r: &AnyRow) -> Result<UsageTotal> {
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
}

fn record(r: &AnyRow) -> Result<UsageRecord> {
    let count = |col: &str| r.try_get::<i64, _>(col).map(|v| v.max(0) as u64);
    Ok(UsageRecord {
        request_id: r.try_get("request_id")?,
        model: r.try_get("model")?,
        key_prefix: r.try_get("prefix")?,
        created_at: r.try_get("created_at")?,
        tokens: TokenUsage {
            prompt: count("prompt_tokens")?,
            cached: count("cached_tokens")?,
            completion: count("completion_tokens")?,
            reasoning: count("reasoning_tokens")?,
        },
        cost: Money(r.try_get("cost")?),
        status: r.try_get("status")?,
        source: r.try_get("source")?,
    })
}

impl Store {
    /// Per account and model totals for the UTC days `from_day..=to_day` (days since the
    /// epoch), from the daily aggregates.
    pub async fn usage(&self, from_day: i64, to_day: i64) -> Result<Vec<UsageTotal>> {
        let q = format!(
            "SELECT {SUMS} FROM usage_daily u LEFT JOIN accounts a ON a.id = u.account_id \
             WHERE u.day >= $1 AND u.day <= $2 \
             GROUP BY a.name, u.model ORDER BY account, model"
        );
        let rows = sqlx::query(&q)
            .bind(from_day)
            .bind(to_day)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(total).collect()
    }

    /// One account's totals per UTC day and model for `from_day..=to_day`, by day then
    /// model: what a key holder may see of the ledger, and nothing of other accounts.
    pub async fn account_usage(
        &self,
        account_id: i64,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<DailyUsage>> {
        let q = format!(
            "SELECT u.day AS day, {SUMS} FROM usage_daily u \
             LEFT JOIN accounts a ON a.id = u.account_id \
             WHERE u.account_id = $1 AND u.day >= $2 AND u.day <= $3 \
             GROUP BY u.day, a.name, u.model ORDER BY day, model"
        );
        let rows = sqlx::query(&q)
            .bind(account_id)
            .bind(from_day)
            .bind(to_day)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DailyUsage {
                    day: r.try_get("day")?,
                    total: total(r)?,
                })
            })
            .collect()
    }

    /// An account's `limit` latest usage rows, newest first.
    pub async fn recent_requests(&self, account_id: i64, limit: u32) -> Result<Vec<UsageRecord>> {
        let rows = sqlx::query(
            "SELECT u.request_id, u.model, k.prefix, u.created_at, u.prompt_tokens, \
             u.cached_tokens, u.reasoning_tokens, u.completion_tokens, u.cost, u.status, \
             u.source FROM usage_records u LEFT JOIN api_keys k ON k.id = u.key_id \
             WHERE u.account_id = $1 ORDER BY u.id DESC LIMIT $2",
        )
        .bind(account_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(record).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{pg_store, temp_store};
    use crate::store::{DAY, OPEN_ACCOUNT, Outcome, Settlement, Source, unix_now};
    use tokenfab_testkit::unique;

    fn settlement(id: &str, account: i64, key: Option<i64>, model: &str, cost: i64) -> Settlement {
        Settlement {
            request_id: id.into(),
            account_id: account,
            key_id: key,
            model: model.into(),
            tokens: TokenUsage {
                prompt: 10,
                cached: 2,
                completion: 5,
                reasoning: 3,
            },
            cost: Money(cost),
            held: Money(0),
            outcome: Outcome::Done,
            source: Source::Engine,
        }
    }

    /// Two accounts and open access settle on two models today, and yesterday's aggregate
    /// of one of them is there too: each account sees its own days, models and rows, never
    /// another's.
    async fn reports_keep_accounts_apart(store: &Store) {
        let tag = unique("reports");
        let a = store
            .create_account(&format!("{tag}-a"), "default")
            .await
            .unwrap();
        let b = store
            .create_account(&format!("{tag}-b"), "default")
            .await
            .unwrap();
        let (_, key) = store.create_key(&a.name).await.unwrap();
        let (m1, m2) = (format!("{tag}-m1"), format!("{tag}-m2"));
        let rid = |i: u32| format!("{tag}-r{i}");
        let mut group = vec![
            settlement(&rid(0), a.id, Some(key.id), &m1, 7),
            settlement(&rid(1), a.id, Some(key.id), &m2, 11),
            settlement(&rid(2), b.id, None, &m1, 13),
            settlement(&rid(3), OPEN_ACCOUNT, None, &m1, 0),
            settlement(&rid(4), a.id, Some(key.id), &m1, 17),
        ];
        group[4].outcome = Outcome::ClientGone;
        for s in &group {
            assert!(store.settle(s).await.unwrap());
        }
        let today = unix_now().div_euclid(DAY);
        sqlx::query(
            "INSERT INTO usage_daily (account_id, model, day, requests, prompt_tokens, \
             cached_tokens, reasoning_tokens, completion_tokens, cost) \
             VALUES ($1, $2, $3, 4, 40, 0, 0, 20, 100)",
        )
        .bind(a.id)
        .bind(&m2)
        .bind(today - 1)
        .execute(&store.pool)
        .await
        .unwrap();

        let days = store.account_usage(a.id, today - 1, today).await.unwrap();
        let seen: Vec<(i64, &str, i64, i64, Money)> = days
            .iter()
            .map(|d| {
                let t = &d.total;
                (d.day, t.model.as_str(), t.requests, t.prompt_tokens, t.cost)
            })
            .collect();
        assert_eq!(
            seen,
            [
                (today - 1, m2.as_str(), 4, 40, Money(100)),
                (today, m1.as_str(), 2, 20, Money(24)),
                (today, m2.as_str(), 1, 10, Money(11)),
            ]
        );
        assert!(days.iter().all(|d| d.total.account == a.name));
        // The period bounds the days.
        assert_eq!(
            store.account_usage(a.id, today, today).await.unwrap().len(),
            2
        );
        let b_days = store.account_usage(b.id, today - 1, today).await.unwrap();
        assert_eq!(b_days.len(), 1);
        assert_eq!(
            (b_days[0].total.requests, b_days[0].total.cost),
            (1, Money(13))
        );

        let rows = store.recent_requests(a.id, 10).await.unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, [rid(4), rid(1), rid(0)]);
        let newest = &rows[0];
        assert_eq!(
            (newest.model.as_str(), newest.cost, newest.status.as_str()),
            (m1.as_str(), Money(17), "client_gone")
        );
        assert_eq!(newest.key_prefix.as_deref(), Some(key.prefix.as_str()));
        assert_eq!(newest.tokens, group[4].tokens);
        assert_eq!(newest.source, "engine");
        assert_eq!(store.recent_requests(a.id, 1).await.unwrap().len(), 1);
        let b_rows = store.recent_requests(b.id, 10).await.unwrap();
        assert_eq!(b_rows.len(), 1);
        assert_eq!(
            (
                b_rows[0].request_id.as_str(),
                b_rows[0].key_prefix.as_deref()
            ),
            (rid(2).as_str(), None)
        );
    }

    #[tokio::test]
    async fn reports_keep_accounts_apart_on_sqlite() {
        let (store, _db) = temp_store("reports").await;
        reports_keep_accounts_apart(&store).await;
    }

    /// On the PostgreSQL of scripts/services.sh (TOKENFAB_TEST_PG); skipped without one.
    #[tokio::test]
    async fn reports_keep_accounts_apart_on_postgres() {
        if let Some(store) = pg_store().await {
            reports_keep_accounts_apart(&store).await;
        }
    }
}
