//! The batch API's records: files (their bytes live in a directory, not here), batches
//! with OpenAI's lifecycle, and one row per input line, whose state is the batch's durable
//! progress: a restart runs the `pending` lines and no other.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::schema::tuples;
use super::{Result, Store, unix_now};

/// A file's record: whose it is and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub id: String,
    pub account_id: i64,
    pub bytes: i64,
    pub filename: String,
    pub purpose: String,
    pub created_at: i64,
}

/// A batch's record, in OpenAI's terms; every `*_at` is the unix time its status was
/// reached.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchRecord {
    pub id: String,
    pub account_id: i64,
    pub key_id: Option<i64>,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    /// The batch's own errors (OpenAI's `errors` object), as JSON text.
    pub errors: Option<String>,
    /// The client's `metadata`, as JSON text.
    pub metadata: Option<String>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: i64,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

/// One input line: its request, or none when the line was refused as it was read (its
/// `result` is then the error line already).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLine {
    pub line: i64,
    pub custom_id: Option<String>,
    pub request: Option<String>,
    /// `pending`, `done` (its result is an output line) or `failed` (an error line).
    pub state: String,
    pub result: Option<String>,
}

/// How many lines a batch has, and how many ended each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineCounts {
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
}

const BATCH_COLS: &str = "id, account_id, key_id, endpoint, input_file_id, completion_window, \
    status, output_file_id, error_file_id, errors, metadata, created_at, in_progress_at, \
    expires_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at, cancelled_at";

/// Statuses a runner still has work in.
const OPEN: &str = "('validating', 'in_progress', 'cancelling', 'finalizing')";

fn batch(row: &AnyRow) -> Result<BatchRecord> {
    Ok(BatchRecord {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        key_id: row.try_get("key_id")?,
        endpoint: row.try_get("endpoint")?,
        input_file_id: row.try_get("input_file_id")?,
        completion_window: row.try_get("completion_window")?,
        status: row.try_get("status")?,
        output_file_id: row.try_get("output_file_id")?,
        error_file_id: row.try_get("error_file_id")?,
        errors: row.try_get("errors")?,
        metadata: row.try_get("metadata")?,
        created_at: row.try_get("created_at")?,
        in_progress_at: row.try_get("in_progress_at")?,
        expires_at: row.try_get("expires_at")?,
        finalizing_at: row.try_get("finalizing_at")?,
        completed_at: row.try_get("completed_at")?,
        failed_at: row.try_get("failed_at")?,
        expired_at: row.try_get("expired_at")?,
        cancelling_at: row.try_get("cancelling_at")?,
        cancelled_at: row.try_get("cancelled_at")?,
    })
}

fn line(row: &AnyRow) -> Result<BatchLine> {
    Ok(BatchLine {
        line: row.try_get("line")?,
        custom_id: row.try_get("custom_id")?,
        request: row.try_get("request")?,
        state: row.try_get("state")?,
        result: row.try_get("result")?,
    })
}

/// The column that records when a batch reached `status`; `None` for a status that is
/// not one of OpenAI's.
fn reached_column(status: &str) -> Option<&'static str> {
    Some(match status {
        "in_progress" => "in_progress_at",
        "finalizing" => "finalizing_at",
        "completed" => "completed_at",
        "failed" => "failed_at",
        "expired" => "expired_at",
        "cancelling" => "cancelling_at",
        "cancelled" => "cancelled_at",
        _ => return None,
    })
}

/// Most lines one insert carries (6 parameters each).
const CHUNK: usize = 64;

impl Store {
    pub async fn add_file(&self, f: &FileRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO files (id, account_id, bytes, filename, purpose, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&f.id)
        .bind(f.account_id)
        .bind(f.bytes)
        .bind(&f.filename)
        .bind(&f.purpose)
        .bind(f.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The file `id` if it is `account_id`'s.
    pub async fn file(&self, account_id: i64, id: &str) -> Result<Option<FileRecord>> {
        let row = sqlx::query(
            "SELECT id, account_id, bytes, filename, purpose, created_at FROM files \
             WHERE id = $1 AND account_id = $2",
        )
        .bind(id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(FileRecord {
                id: r.try_get("id")?,
                account_id: r.try_get("account_id")?,
                bytes: r.try_get("bytes")?,
                filename: r.try_get("filename")?,
                purpose: r.try_get("purpose")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// Records a batch and its lines, in one transaction: a batch exists with all its
    /// lines or not at all.
    pub async fn create_batch(&self, b: &BatchRecord, lines: &[BatchLine]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO batches ({BATCH_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
        ))
        .bind(&b.id)
        .bind(b.account_id)
        .bind(b.key_id)
        .bind(&b.endpoint)
        .bind(&b.input_file_id)
        .bind(&b.completion_window)
        .bind(&b.status)
        .bind(&b.output_file_id)
        .bind(&b.error_file_id)
        .bind(&b.errors)
        .bind(&b.metadata)
        .bind(b.created_at)
        .bind(b.in_progress_at)
        .bind(b.expires_at)
        .bind(b.finalizing_at)
        .bind(b.completed_at)
        .bind(b.failed_at)
        .bind(b.expired_at)
        .bind(b.cancelling_at)
        .bind(b.cancelled_at)
        .execute(&mut *tx)
        .await?;
        for chunk in lines.chunks(CHUNK) {
            let q = format!(
                "INSERT INTO batch_lines (batch_id, line, custom_id, request, state, result) \
                 VALUES {}",
                tuples(self.backend, chunk.len(), 6)
            );
            let mut query = sqlx::query(&q);
            for l in chunk {
                query = query
                    .bind(&b.id)
                    .bind(l.line)
                    .bind(&l.custom_id)
                    .bind(&l.request)
                    .bind(&l.state)
                    .bind(&l.result);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The batch `id`, whoever's it is (the runner's view; handlers check the account).
    pub async fn batch(&self, id: &str) -> Result<Option<BatchRecord>> {
        let row = sqlx::query(&format!("SELECT {BATCH_COLS} FROM batches WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(batch).transpose()
    }

    /// An account's batches, newest first, after the batch `after` (OpenAI's cursor).
    pub async fn batches(
        &self,
        account_id: i64,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BatchRecord>> {
        let rows = match after {
            Some(after) => {
                sqlx::query(&format!(
                    "SELECT {BATCH_COLS} FROM batches b WHERE account_id = $1 AND EXISTS \
                     (SELECT 1 FROM batches a WHERE a.id = $2 AND (b.created_at < a.created_at \
                     OR (b.created_at = a.created_at AND b.id < a.id))) \
                     ORDER BY created_at DESC, id DESC LIMIT $3"
                ))
                .bind(account_id)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {BATCH_COLS} FROM batches WHERE account_id = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(account_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(batch).collect()
    }

    /// Every batch with work left, oldest first: what a runner picks up on start.
    pub async fn open_batches(&self) -> Result<Vec<BatchRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLS} FROM batches WHERE status IN {OPEN} ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(batch).collect()
    }

    /// Moves a batch to `status` (noting when) if its status is one of `from`; false when
    /// it was not.
    pub async fn move_batch(&self, id: &str, from: &[&str], status: &str) -> Result<bool> {
        let Some(column) = reached_column(status) else {
            return Ok(false);
        };
        // The `IN` list's placeholders follow the three before it.
        let list: Vec<String> = (0..from.len()).map(|i| format!("${}", i + 4)).collect();
        let q = format!(
            "UPDATE batches SET status = $1, {column} = $2 WHERE id = $3 AND status IN ({})",
            list.join(", ")
        );
        let mut query = sqlx::query(&q).bind(status).bind(unix_now()).bind(id);
        for f in from {
            query = query.bind(*f);
        }
        Ok(query.execute(&self.pool).await?.rows_affected() == 1)
    }

    /// Marks a batch failed as a whole, with its `errors` object.
    pub async fn fail_batch(&self, id: &str, errors: &str) -> Result<()> {
        sqlx::query(
            "UPDATE batches SET status = 'failed', failed_at = $1, errors = $2 WHERE id = $3",
        )
        .bind(unix_now())
        .bind(errors)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Names a finished batch's output and error files.
    pub async fn set_batch_files(
        &self,
        id: &str,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE batches SET output_file_id = $1, error_file_id = $2 WHERE id = $3")
            .bind(output)
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Up to `limit` pending lines of a batch after line `after`, in order.
    pub async fn pending_lines(&self, id: &str, after: i64, limit: i64) -> Result<Vec<BatchLine>> {
        let rows = sqlx::query(
            "SELECT line, custom_id, request, state, result FROM batch_lines \
             WHERE batch_id = $1 AND state = 'pending' AND line > $2 ORDER BY line LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(line).collect()
    }

    /// Records how a pending line ended: `done` with its output line or `failed` with its
    /// error line. False when it was not pending (recorded before).
    pub async fn finish_line(&self, id: &str, n: i64, state: &str, result: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE batch_lines SET state = $1, result = $2 \
             WHERE batch_id = $3 AND line = $4 AND state = 'pending'",
        )
        .bind(state)
        .bind(result)
        .bind(id)
        .bind(n)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    pub async fn line_counts(&self, id: &str) -> Result<LineCounts> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
             CAST(COALESCE(SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0) AS BIGINT) AS completed, \
             CAST(COALESCE(SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) AS BIGINT) AS failed \
             FROM batch_lines WHERE batch_id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(LineCounts {
            total: row.try_get("total")?,
            completed: row.try_get("completed")?,
            failed: row.try_get("failed")?,
        })
    }

    /// Every line of a batch from line `after` on, in order, at most `limit`: the finished
    /// batch's output and error files are written from these.
    pub async fn lines(&self, id: &str, after: i64, limit: i64) -> Result<Vec<BatchLine>> {
        let rows = sqlx::query(
            "SELECT line, custom_id, request, state, result FROM batch_lines \
             WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(line).collect()
    }
}
