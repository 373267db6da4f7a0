//! The ledger: accounts, keys, credits, reservations, usage rows and daily aggregates, on
//! SQLite (the embedded default, WAL, every commit synced) or PostgreSQL (several tokenfab
//! replicas sharing one ledger), with one schema applied by sqlx's migrator.
//!
//! Money moves only inside transactions that write first (no read-then-write upgrades,
//! which SQLite answers with "busy"), and every check that protects a balance is part of
//! the statement that changes it (`UPDATE … WHERE balance - reserved >= amount`), so
//! concurrent requests on any number of replicas cannot overdraw.
//!
//! # Layout
//! - here: [`Store`] (a connection pool and the backend it talks to), [`Store::open`], which
//!   picks the backend from the URL and brings the schema up to date; [`StoreError`]; the
//!   ledger's clock ([`unix_now`]).
//! - `schema`: the migrator (one schema for both databases) and the placeholder spelling of
//!   multi-row statements, where the two differ.
//! - `accounts`: [`Account`]s and the credits that fill them; [`OPEN_ACCOUNT`].
//! - `keys`: API [`KeyRecord`]s: made, listed, revoked, found by the hash of their secret.
//! - `ledger`: charging: the [`Reservation`] a request holds before it runs, the
//!   [`Settlement`] that charges it and releases the hold (one, or a group in one
//!   transaction), and the recovery of holds a stopped server left; the [`Outcome`] and
//!   [`Source`] a usage row records.
//! - `reports`: [`UsageTotal`]s and one account's [`DailyUsage`] from the daily
//!   aggregates; an account's latest [`UsageRecord`]s.
//! - `batches`: the batch API's [`FileRecord`]s, [`BatchRecord`]s and their [`BatchLine`]s,
//!   whose states are a batch's durable progress.
//! - `testing` (tests only): a throwaway SQLite ledger.

mod accounts;
mod batches;
mod keys;
mod ledger;
mod reports;
mod schema;
#[cfg(test)]
mod testing;

pub use accounts::{Account, OPEN_ACCOUNT};
pub use batches::{BatchLine, BatchRecord, FileRecord, LineCounts};
pub use keys::KeyRecord;
pub use ledger::{Outcome, Reservation, Settlement, Source};
pub use reports::{DailyUsage, UsageRecord, UsageTotal};

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Executor};

/// What can go wrong with the ledger.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot update the database schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no account is named `{0}`")]
    NoAccount(String),
    #[error("an account named `{0}` already exists")]
    AccountExists(String),
    #[error("no key matches `{0}`")]
    NoKey(String),
    #[error("`{0}` matches several keys; give more of it")]
    AmbiguousKey(String),
    #[error("cannot read random bytes for a key: {0}")]
    Random(String),
    #[error("`{0}` is not a database URL: use sqlite://PATH or postgres://USER@HOST/DB")]
    BadUrl(String),
    #[error("could not record a settlement: {0}")]
    Settle(String),
    /// The ledger could not be written for a passing reason (a full disk, a database
    /// restarting): the settlement is not recorded yet, and is kept and retried until it is.
    #[error("the ledger cannot be written now ({0}); the settlement is kept and retried")]
    Kept(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The clock ([`tokenfab_wire::time::unix_now`]) as the ledger stores it (`BIGINT`).
pub fn unix_now() -> i64 {
    tokenfab_wire::time::unix_now() as i64
}

const DAY: i64 = 86_400;

/// A handle on the ledger database; cheap to clone (a connection pool).
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Tests only: the next reservation commits, then fails as if the connection dropped
    /// between the COMMIT and its reply (which a test cannot time on a real database).
    #[cfg(test)]
    pub(crate) lose_commit_reply: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Store {
    /// Opens (creating where needed) the database at `url` and brings its schema up to
    /// date: `sqlite://PATH` (the file is created) or `postgres://…`.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::BadUrl(url.to_owned()));
        };
        // A connection released inside a transaction (one that failed, rolled back on drop)
        // is closed, not pooled again. A commit that fails on a full disk can leave SQLite
        // having rolled the transaction back on its own while sqlx still counts it open (its
        // ROLLBACK then fails and the count stays): that connection's next "transaction"
        // is a savepoint, whose failed commit leaves a real transaction open, holding the
        // write lock (every other connection: "database is locked") and swallowing every
        // later write on it, never committed. Commits and explicit rollbacks leave the
        // count at zero, so only failed transactions cost a reconnection.
        let pooled = AnyPoolOptions::new()
            .after_release(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }));
        let pool = match backend {
            Backend::Sqlite => {
                let url = if url.contains('?') || url.contains(":memory:") {
                    url.to_owned()
                } else {
                    format!("{url}?mode=rwc")
                };
                pooled
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run beside the writer; FULL syncs every
                            // commit, so a settled request survives a power cut too.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => pooled.max_connections(8).connect(url).await?,
        };
        schema::migrator(backend).run(&pool).await?;
        Ok(Store {
            pool,
            backend,
            #[cfg(test)]
            lose_commit_reply: Default::default(),
        })
    }
}
