//! API keys as the ledger keeps them: the hash of the secret, never the secret, and who
//! owns it.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Account, Result, Store, StoreError, unix_now};
use crate::keys;
use crate::money::Money;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: i64,
    pub account_id: i64,
    pub account: String,
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

fn key_record(row: &AnyRow) -> Result<KeyRecord> {
    Ok(KeyRecord {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        account: row.try_get("account")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

const KEY_COLS: &str = "k.id AS id, k.account_id AS account_id, a.name AS account, \
     k.prefix AS prefix, k.created_at AS created_at, k.last_used_at AS last_used_at, \
     k.revoked_at AS revoked_at";

impl Store {
    /// Makes a key for an account; returns the secret (shown once) and its record.
    pub async fn create_key(&self, account_name: &str) -> Result<(String, KeyRecord)> {
        let acc = self.account(account_name).await?;
        let new = keys::generate().map_err(|e| StoreError::Random(e.to_string()))?;
        let row = sqlx::query(
            "INSERT INTO api_keys (account_id, hash, prefix, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(acc.id)
        .bind(&new.hash)
        .bind(&new.prefix)
        .bind(unix_now())
        .fetch_one(&self.pool)
        .await?;
        let id: i64 = row.try_get("id")?;
        let rec = self
            .keys()
            .await?
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| StoreError::NoKey(new.prefix.clone()))?;
        Ok((new.secret, rec))
    }

    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        let q = format!(
            "SELECT {KEY_COLS} FROM api_keys k JOIN accounts a ON a.id = k.account_id ORDER BY k.id"
        );
        let rows = sqlx::query(&q).fetch_all(&self.pool).await?;
        rows.iter().map(key_record).collect()
    }

    /// Revokes the key whose id (`#12` or `12`) or prefix is given.
    pub async fn revoke_key(&self, which: &str) -> Result<KeyRecord> {
        let all = self.keys().await?;
        let id = which.trim_start_matches('#').parse::<i64>().ok();
        let found: Vec<&KeyRecord> = all
            .iter()
            .filter(|k| Some(k.id) == id || (which.len() >= 4 && k.prefix.starts_with(which)))
            .collect();
        let key = match found.as_slice() {
            [] => return Err(StoreError::NoKey(which.to_owned())),
            [k] => *k,
            _ => return Err(StoreError::AmbiguousKey(which.to_owned())),
        };
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(unix_now())
            .bind(key.id)
            .execute(&self.pool)
            .await?;
        let mut key = key.clone();
        key.revoked_at.get_or_insert(unix_now());
        Ok(key)
    }

    /// The key with this hash and its account, revoked or not.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<(KeyRecord, String, Account)>> {
        let q = format!(
            "SELECT {KEY_COLS}, k.hash AS hash, a.name AS a_name, a.tier AS a_tier, \
             a.balance AS a_balance, a.reserved AS a_reserved, a.created_at AS a_created_at \
             FROM api_keys k JOIN accounts a ON a.id = k.account_id WHERE k.hash = $1"
        );
        let Some(row) = sqlx::query(&q)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let key = key_record(&row)?;
        let acc = Account {
            id: key.account_id,
            name: row.try_get("a_name")?,
            tier: row.try_get("a_tier")?,
            balance: Money(row.try_get("a_balance")?),
            reserved: Money(row.try_get("a_reserved")?),
            created_at: row.try_get("a_created_at")?,
        };
        Ok(Some((key, row.try_get("hash")?, acc)))
    }

    /// Whether any key was ever made: from then on every request needs one.
    pub async fn has_keys(&self) -> Result<bool> {
        let row = sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM api_keys")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")? > 0)
    }

    pub async fn touch_key(&self, id: i64, at: i64) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::temp_store;

    #[tokio::test]
    async fn keys_are_found_by_hash_and_revoked_by_prefix() {
        let (store, _db) = temp_store("keys").await;
        assert!(!store.has_keys().await.unwrap());
        store.create_account("a", "pro").await.unwrap();
        let (secret, rec) = store.create_key("a").await.unwrap();
        assert!(store.has_keys().await.unwrap());
        let (k, hash, acc) = store
            .key_by_hash(&keys::hash(&secret))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((k.id, acc.tier.as_str()), (rec.id, "pro"));
        assert_eq!(hash, keys::hash(&secret));
        assert!(
            store
                .key_by_hash(&keys::hash("sk-other"))
                .await
                .unwrap()
                .is_none()
        );
        let revoked = store.revoke_key(&rec.prefix).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        let (k, _, _) = store
            .key_by_hash(&keys::hash(&secret))
            .await
            .unwrap()
            .unwrap();
        assert!(k.revoked_at.is_some());
        assert!(matches!(
            store.revoke_key("#999").await,
            Err(StoreError::NoKey(_))
        ));
    }
}
