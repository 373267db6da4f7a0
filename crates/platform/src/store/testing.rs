//! Test-only: a throwaway SQLite ledger, shared by the store's tests.

use super::Store;

pub(super) async fn temp_store(tag: &str) -> (Store, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("tokenfab-store-{tag}-{}.db", std::process::id()));
    remove_db(&path);
    let store = Store::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    (store, path)
}

/// Removes a SQLite ledger with its WAL files.
pub(super) fn remove_db(path: &std::path::Path) {
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
    }
}
