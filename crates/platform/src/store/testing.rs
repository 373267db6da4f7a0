//! Test-only: the ledgers the store's tests run on: a throwaway SQLite one, and the
//! PostgreSQL of scripts/services.sh.

use tokenfab_testkit::TempPath;

use super::Store;

/// A fresh ledger; the guard removes its files when the test ends.
pub(super) async fn temp_store(tag: &str) -> (Store, TempPath) {
    let db = tokenfab_testkit::temp_db(&format!("store-{tag}"));
    let store = Store::open(&db.sqlite_url()).await.unwrap();
    (store, db)
}

/// The PostgreSQL of scripts/services.sh (TOKENFAB_TEST_PG); `None`, said on stderr, when
/// there is none, and the test is skipped.
pub(super) async fn pg_store() -> Option<Store> {
    let Ok(url) = std::env::var("TOKENFAB_TEST_PG") else {
        eprintln!("TOKENFAB_TEST_PG is not set: skipped (scripts/services.sh starts one)");
        return None;
    };
    Some(Store::open(&url).await.unwrap())
}
