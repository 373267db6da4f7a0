//! Test-only: a throwaway SQLite ledger, shared by the store's tests.

use tokenfab_testkit::TempPath;

use super::Store;

/// A fresh ledger; the guard removes its files when the test ends.
pub(super) async fn temp_store(tag: &str) -> (Store, TempPath) {
    let db = tokenfab_testkit::temp_db(&format!("store-{tag}"));
    let store = Store::open(&db.sqlite_url()).await.unwrap();
    (store, db)
}
