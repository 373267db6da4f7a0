//! The batch API's machinery: where files are kept, how an input file becomes lines, and
//! the one task that runs batches.
//!
//! # Layout
//! - here: [`Batches`] (the files directory, the limits, the runner's wake-up) and the
//!   completion windows a batch may ask for ([`window_seconds`]).
//! - [`input`]: an input file read into the batch's lines; a line that cannot run (bad
//!   JSON, a duplicate `custom_id`, another endpoint's url, too large) is recorded with its
//!   error at once, never failing the batch.
//! - [`runner`]: the one task per server that runs batches: it moves them through OpenAI's
//!   statuses, feeds their pending lines to the same code the HTTP handlers use
//!   ([`crate::routes::chat::answer`] and its siblings) at low priority and low
//!   concurrency, records each line's answer durably, and writes the output and error
//!   files at the end. A restart picks up where the last run stopped: lines already
//!   recorded are not run again, and a line cut short resumes under the same ledger id,
//!   so it is charged once.

pub mod input;
pub mod runner;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Notify;

/// The endpoints a batch's lines may call.
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// How batches are served.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Where files' bytes are kept: the data directory, or a directory every replica
    /// shares (their records are in the shared ledger).
    pub files_dir: PathBuf,
    /// Largest file accepted by `POST /v1/files`.
    pub max_file_bytes: usize,
    /// Most requests (lines) in one batch.
    pub max_lines: usize,
    /// Lines of all batches in the engine at once: kept at half of `max_running` or less,
    /// so batch work never fills the engine's queue against interactive requests.
    pub concurrency: usize,
    /// Accept completion windows in seconds (`"30s"`), for tests of expiry.
    pub second_windows: bool,
}

/// The batch API's state: its configuration and the runner's doorbell.
pub struct Batches {
    pub cfg: BatchConfig,
    wake: Notify,
}

impl Batches {
    /// Serves batches with `cfg`; the files directory is created.
    pub fn new(cfg: BatchConfig) -> io::Result<Arc<Batches>> {
        std::fs::create_dir_all(&cfg.files_dir)?;
        Ok(Arc::new(Batches {
            cfg,
            wake: Notify::new(),
        }))
    }

    /// A file's bytes' place. Ids are minted here (hex and dashes), never taken from a
    /// client unchecked: a route looks the id up in the ledger first.
    fn path(&self, id: &str) -> PathBuf {
        self.cfg.files_dir.join(id)
    }

    /// Keeps a file's bytes: written aside, synced and renamed, so a file is whole or
    /// absent after a crash.
    pub async fn write(&self, id: &str, bytes: Vec<u8>) -> io::Result<()> {
        let path = self.path(id);
        let tmp = path.with_extension("part");
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(io::Error::other)?
    }

    pub async fn read(&self, id: &str) -> io::Result<Vec<u8>> {
        tokio::fs::read(self.path(id)).await
    }

    /// Tells the runner there is work (a new batch, a cancellation, a line done).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The seconds a `completion_window` gives: `"24h"` as OpenAI has it, or any whole number
/// of hours from 1 to 168 (a week); in seconds (`"30s"`) only where `seconds` allows.
pub fn window_seconds(window: &str, seconds: bool) -> Option<i64> {
    let (n, unit) = window.split_at(window.len().checked_sub(1)?);
    let n: i64 = n.parse().ok()?;
    match unit {
        "h" if (1..=168).contains(&n) => Some(n * 3600),
        "s" if seconds && n >= 1 => Some(n),
        _ => None,
    }
}

/// The id of a batch's line `n` in its output or error file.
pub fn line_id(batch_id: &str, n: i64) -> String {
    format!(
        "batch_req_{}_{n}",
        batch_id.strip_prefix("batch_").unwrap_or(batch_id)
    )
}

/// The id line `n` of a batch is admitted and settled under in the ledger: the same on
/// every run, so a resumed line settles (and is charged) once.
pub fn ledger_id(batch_id: &str, n: i64) -> String {
    format!("{}{n}", ledger_prefix(batch_id))
}

/// What the ledger ids of a batch's lines, and no other batch's, start with.
pub fn ledger_prefix(batch_id: &str) -> String {
    format!("{batch_id}:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_hours_and_seconds_only_for_tests() {
        assert_eq!(window_seconds("24h", false), Some(86_400));
        assert_eq!(window_seconds("1h", false), Some(3600));
        assert_eq!(window_seconds("169h", false), None);
        assert_eq!(window_seconds("0h", false), None);
        assert_eq!(window_seconds("30s", false), None);
        assert_eq!(window_seconds("30s", true), Some(30));
        for bad in ["", "h", "24", "1d", "-1h", "x h"] {
            assert_eq!(window_seconds(bad, true), None, "{bad}");
        }
    }
}
