//! Accounts: who owns money, and the credits that put it in (or take it back).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, unix_now};
use crate::money::Money;

/// The account of requests made while no keys exist (the open quick start).
pub const OPEN_ACCOUNT: i64 = 0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub name: String,
    pub tier: String,
    /// What the account owns: credits minus settled charges.
    pub balance: Money,
    /// Held by requests still running.
    pub reserved: Money,
    pub created_at: i64,
}

impl Account {
    /// What a new request may still reserve.
    pub fn available(&self) -> Money {
        Money(self.balance.0 - self.reserved.0)
    }
}

fn account(row: &AnyRow) -> Result<Account> {
    Ok(Account {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        tier: row.try_get("tier")?,
        balance: Money(row.try_get("balance")?),
        reserved: Money(row.try_get("reserved")?),
        created_at: row.try_get("created_at")?,
    })
}

const ACCOUNT_COLS: &str = "id, name, tier, balance, reserved, created_at";

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    pub async fn create_account(&self, name: &str, tier: &str) -> Result<Account> {
        let q = format!(
            "INSERT INTO accounts (name, tier, balance, reserved, created_at) \
             VALUES ($1, $2, 0, 0, $3) RETURNING {ACCOUNT_COLS}"
        );
        match sqlx::query(&q)
            .bind(name)
            .bind(tier)
            .bind(unix_now())
            .fetch_one(&self.pool)
            .await
        {
            Ok(row) => account(&row),
            Err(e) if is_unique_violation(&e) => Err(StoreError::AccountExists(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn account(&self, name: &str) -> Result<Account> {
        let q = format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE name = $1");
        match sqlx::query(&q)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
        {
            Some(row) => account(&row),
            None => Err(StoreError::NoAccount(name.to_owned())),
        }
    }

    pub async fn account_by_id(&self, id: i64) -> Result<Option<Account>> {
        let q = format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1");
        let row = sqlx::query(&q).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(account).transpose()
    }

    pub async fn accounts(&self) -> Result<Vec<Account>> {
        let q = format!("SELECT {ACCOUNT_COLS} FROM accounts ORDER BY name");
        let rows = sqlx::query(&q).fetch_all(&self.pool).await?;
        rows.iter().map(account).collect()
    }

    /// Adds `amount` (negative to take money back) to an account's balance, with a credit
    /// row saying so, in one transaction.
    pub async fn credit(&self, name: &str, amount: Money, note: &str) -> Result<Account> {
        let mut tx = self.pool.begin().await?;
        let q = format!(
            "UPDATE accounts SET balance = balance + $1 WHERE name = $2 RETURNING {ACCOUNT_COLS}"
        );
        let Some(row) = sqlx::query(&q)
            .bind(amount.0)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(StoreError::NoAccount(name.to_owned()));
        };
        let acc = account(&row)?;
        sqlx::query(
            "INSERT INTO credits (account_id, amount, note, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(acc.id)
        .bind(amount.0)
        .bind(note)
        .bind(unix_now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(acc)
    }
}
