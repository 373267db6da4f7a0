//! The batch API's objects, in OpenAI's shapes: files (`POST /v1/files`), batches
//! (`POST /v1/batches`) and the lines of a batch's input, output and error files.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A file, as `POST /v1/files` and `GET /v1/files/{id}` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileObject {
    pub id: String,
    pub object: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
}

/// `POST /v1/batches`' body.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct CreateBatch {
    pub input_file_id: Option<String>,
    pub endpoint: Option<String>,
    pub completion_window: Option<String>,
    pub metadata: Option<Value>,
}

/// How many of a batch's requests there are and how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// A batch, as every batch route answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Batch {
    pub id: String,
    pub object: String,
    pub endpoint: String,
    pub errors: Option<Value>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub expires_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    pub failed_at: Option<u64>,
    pub expired_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    pub cancelled_at: Option<u64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<Value>,
}

/// `GET /v1/batches`: a page, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchList {
    pub object: String,
    pub data: Vec<Batch>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// One line of a batch's input file.
#[derive(Clone, Debug, Deserialize)]
pub struct InputLine {
    pub custom_id: Option<String>,
    pub method: Option<String>,
    pub url: Option<String>,
    pub body: Option<Value>,
}

/// The HTTP answer a line got: its status, its request id and its JSON body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineResponse {
    pub status_code: u16,
    pub request_id: String,
    pub body: Value,
}

/// Why a line has no answer (or what its error answer said): OpenAI's `{code, message}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineError {
    pub code: String,
    pub message: String,
}

/// One line of a batch's output file (an answer) or error file (an error).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputLine {
    pub id: String,
    pub custom_id: Option<String>,
    pub response: Option<LineResponse>,
    pub error: Option<LineError>,
}

/// `POST /v1/files`' form: what the OpenAI SDK's `files.create` sends.
#[derive(Clone, Debug, utoipa::ToSchema)]
pub struct FileUpload {
    /// `batch`.
    pub purpose: String,
    /// The JSONL file: one request per line, `{"custom_id", "method": "POST", "url", "body"}`.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
}
