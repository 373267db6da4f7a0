//! What the workspace's tests share, written once: where the test assets live, names no
//! other test, process or run uses, and temporary paths that remove themselves. Used only
//! as a dev-dependency.
//!
//! # Layout
//! All here, one small file:
//! - [`cache_home`], [`test_assets_dir`] and [`requantized_dir`]: the folders the fetch
//!   and requantize scripts fill.
//! - [`unique`]: a tag made unique, for names in the shared temp directory and in the
//!   PostgreSQL and Redis that outlive a test.
//! - [`TempPath`], made by [`temp_path`], [`temp_db`] and [`temp_dir`]: a path in the temp
//!   directory, removed on drop (a SQLite database with its `-wal` and `-shm` files; a
//!   directory with everything in it), also when the test fails.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `$XDG_CACHE_HOME`, else `~/.cache`, as the fetch scripts use.
pub fn cache_home() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        })
}

/// Where the tokenizer vectors and reference templates live (scripts/fetch-test-assets.sh):
/// `$TOKENFAB_TEST_ASSETS`, else `tokenfab/test-assets` under [`cache_home`].
pub fn test_assets_dir() -> PathBuf {
    std::env::var_os("TOKENFAB_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_home().join("tokenfab/test-assets"))
}

/// Where scripts/requantize.sh keeps the test models requantized into every weight type:
/// `$TOKENFAB_REQUANTIZED`, else `tokenfab/requantized` under [`cache_home`].
pub fn requantized_dir() -> PathBuf {
    std::env::var_os("TOKENFAB_REQUANTIZED")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_home().join("tokenfab/requantized"))
}

/// `tag` followed by the process id, the clock in nanoseconds and a counter: distinct across
/// the threads of a test binary, test binaries running side by side, and runs (a
/// PostgreSQL ledger or a Redis outlives a run).
pub fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{tag}-{}-{nanos}-{n}", std::process::id())
}

/// A path in the temp directory that is removed when dropped: a directory with everything
/// in it, or a file with the `-wal` and `-shm` files SQLite keeps beside a database.
/// Derefs to the [`Path`].
#[derive(Debug)]
pub struct TempPath(PathBuf);

impl TempPath {
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The `sqlite://` URL of this path, as `--database` and the platform's store take it.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }
}

impl Deref for TempPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
            return;
        }
        for ext in ["", "-wal", "-shm"] {
            let mut name = self.0.clone().into_os_string();
            name.push(ext);
            let _ = std::fs::remove_file(name);
        }
    }
}

/// A fresh path `tokenfab-<unique tag>.<ext>` in the temp directory; nothing is made there.
pub fn temp_path(tag: &str, ext: &str) -> TempPath {
    TempPath(std::env::temp_dir().join(format!("tokenfab-{}.{ext}", unique(tag))))
}

/// A fresh SQLite database path (nothing made yet: opening it creates it), removed with its
/// WAL files on drop.
pub fn temp_db(tag: &str) -> TempPath {
    temp_path(tag, "db")
}

/// A fresh, empty directory, removed with its contents on drop.
pub fn temp_dir(tag: &str) -> TempPath {
    let dir = TempPath(std::env::temp_dir().join(format!("tokenfab-{}", unique(tag))));
    std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("create {}: {e}", dir.0.display()));
    dir
}

/// The cosine of two vectors, in f64: how the embedding tests compare vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_and_paths_clean_up() {
        assert_ne!(unique("t"), unique("t"));
        let db = temp_db("testkit");
        assert!(db.sqlite_url().starts_with("sqlite://") && db.sqlite_url().ends_with(".db"));
        let files: Vec<PathBuf> = ["", "-wal", "-shm"]
            .iter()
            .map(|ext| PathBuf::from(format!("{}{ext}", db.display())))
            .collect();
        for f in &files {
            std::fs::write(f, b"x").unwrap();
        }
        drop(db);
        assert!(files.iter().all(|f| !f.exists()), "{files:?}");
        let dir = temp_dir("testkit");
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/file"), b"x").unwrap();
        let kept = dir.to_path_buf();
        drop(dir);
        assert!(!kept.exists());
    }
}
