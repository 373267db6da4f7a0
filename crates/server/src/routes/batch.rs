//! `POST /v1/batches`, `GET /v1/batches` (newest first, `after`/`limit`),
//! `GET /v1/batches/{id}` and `POST /v1/batches/{id}/cancel`, per account, in OpenAI's
//! shapes; [`router`] mounts them with the files routes. A batch is checked as a whole
//! here (its file, endpoint and window: a 400 at once) and line by line by
//! [`crate::batch::input`] (errors in its error file); [`crate::batch::runner`] runs it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokenfab_platform::Caller;
use tokenfab_platform::keys;
use tokenfab_platform::store::{BatchRecord, Store, unix_now};
use tokenfab_wire::batch::{Batch, BatchList, CreateBatch, RequestCounts};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::batch::{ENDPOINTS, input, window_seconds};
use crate::error::HttpError;
use crate::routes::files::{self, served};
use crate::routes::parse_json;
use crate::state::AppState;

/// The batch API's routes (under `/v1`), where the server serves batches.
pub fn router(state: &AppState) -> OpenApiRouter<Arc<AppState>> {
    let Some(batches) = &state.batches else {
        return OpenApiRouter::new();
    };
    // An upload may be larger than any request body.
    let (schemas, paths, upload) = routes!(files::upload);
    let upload = upload.layer(DefaultBodyLimit::max(
        batches.cfg.max_file_bytes + 64 * 1024,
    ));
    OpenApiRouter::new()
        .routes((schemas, paths, upload))
        .routes(routes!(files::get))
        .routes(routes!(files::content))
        .routes(routes!(create, list))
        .routes(routes!(retrieve))
        .routes(routes!(cancel))
}

fn store_error(e: impl std::fmt::Display) -> HttpError {
    HttpError::internal(format!("the batch store failed: {e}"))
}

/// A batch as the API shows it, with its line counts.
async fn object(store: &Store, b: BatchRecord) -> Result<Batch, HttpError> {
    let counts = store.line_counts(&b.id).await.map_err(store_error)?;
    let json = |t: &Option<String>| t.as_deref().and_then(|t| serde_json::from_str(t).ok());
    let time = |t: Option<i64>| t.map(|t| t as u64);
    Ok(Batch {
        errors: json(&b.errors),
        metadata: json(&b.metadata),
        id: b.id,
        object: "batch".into(),
        endpoint: b.endpoint,
        input_file_id: b.input_file_id,
        completion_window: b.completion_window,
        status: b.status,
        output_file_id: b.output_file_id,
        error_file_id: b.error_file_id,
        created_at: b.created_at as u64,
        in_progress_at: time(b.in_progress_at),
        expires_at: Some(b.expires_at as u64),
        finalizing_at: time(b.finalizing_at),
        completed_at: time(b.completed_at),
        failed_at: time(b.failed_at),
        expired_at: time(b.expired_at),
        cancelling_at: time(b.cancelling_at),
        cancelled_at: time(b.cancelled_at),
        request_counts: RequestCounts {
            total: counts.total as u64,
            completed: counts.completed as u64,
            failed: counts.failed as u64,
        },
    })
}

fn reply(r: Result<Batch, HttpError>) -> Response {
    match r {
        Ok(b) => axum::Json(b).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Starts a batch over an uploaded file of requests.
#[utoipa::path(post, path = "/batches", tag = "batch", security(("api_key" = [])),
    request_body = CreateBatch,
    responses((status = 200, body = Batch), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 404 no such object of the caller's", body = tokenfab_wire::ErrorBody)))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    reply(create_batch(&state, &caller, body).await)
}

async fn create_batch(
    state: &AppState,
    caller: &Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Batch, HttpError> {
    let (batches, store) = served(state)?;
    let req: CreateBatch = parse_json(body, state.limits.max_body_bytes)?;
    let required = |v: Option<String>, name: &str| {
        v.ok_or_else(|| HttpError::bad_request(Some(name), format!("`{name}` is required")))
    };
    let input_file_id = required(req.input_file_id, "input_file_id")?;
    let endpoint = required(req.endpoint, "endpoint")?;
    let window = required(req.completion_window, "completion_window")?;
    if !ENDPOINTS.contains(&endpoint.as_str()) {
        return Err(HttpError::bad_request(
            Some("endpoint"),
            format!("`endpoint` must be one of {}", ENDPOINTS.join(", ")),
        ));
    }
    let Some(seconds) = window_seconds(&window, batches.cfg.second_windows) else {
        return Err(HttpError::bad_request(
            Some("completion_window"),
            "`completion_window` must be a whole number of hours from 1h to 168h, such as 24h",
        ));
    };
    if let Some(m) = &req.metadata
        && !(m.is_object() || m.is_null())
    {
        return Err(HttpError::bad_request(
            Some("metadata"),
            "`metadata` must be an object of strings",
        ));
    }
    let file = files::find(state, caller, &input_file_id)
        .await
        .map_err(|_| {
            HttpError::bad_request(
                Some("input_file_id"),
                format!("no file `{input_file_id}` of yours exists: upload it with POST /v1/files"),
            )
        })?;
    if file.purpose != "batch" {
        return Err(HttpError::bad_request(
            Some("input_file_id"),
            format!(
                "`{input_file_id}` has purpose `{}`: a batch reads only files of purpose `batch`",
                file.purpose
            ),
        ));
    }
    let bytes = batches.read(&file.id).await.map_err(store_error)?;
    let id = format!("batch_{}", keys::random_id().map_err(store_error)?);
    let lines = input::read(&bytes, &id, &endpoint, state.limits.max_body_bytes);
    if lines.is_empty() {
        return Err(HttpError::bad_request(
            Some("input_file_id"),
            "the input file has no requests",
        ));
    }
    let max = batches.cfg.max_lines;
    if lines.len() > max {
        return Err(HttpError::bad_request(
            Some("input_file_id"),
            format!(
                "the input file has {} requests, more than the {max} a batch may hold",
                lines.len()
            ),
        ));
    }
    let now = unix_now();
    let key_id = match caller {
        Caller::Key { key_id, .. } => Some(*key_id),
        Caller::Open => None,
    };
    let record = BatchRecord {
        id,
        account_id: caller.account_id(),
        key_id,
        endpoint,
        input_file_id,
        completion_window: window,
        status: "validating".into(),
        metadata: req
            .metadata
            .filter(|m| m.is_object())
            .map(|m| m.to_string()),
        created_at: now,
        expires_at: now + seconds,
        ..BatchRecord::default()
    };
    store
        .create_batch(&record, &lines)
        .await
        .map_err(store_error)?;
    batches.wake();
    object(store, record).await
}

/// The caller's batch `id`.
async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<BatchRecord, HttpError> {
    let (_, store) = served(state)?;
    store
        .batch(id)
        .await
        .map_err(store_error)?
        .filter(|b| b.account_id == caller.account_id())
        .ok_or_else(|| HttpError::object_not_found("batch", id))
}

/// One of the caller's batches, with its line counts.
#[utoipa::path(get, path = "/batches/{id}", tag = "batch", security(("api_key" = [])),
    params(("id" = String, Path, description = "The batch's id (`batch_…`)")),
    responses((status = 200, body = Batch), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 404 no such object of the caller's", body = tokenfab_wire::ErrorBody)))]
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let found = async {
        let b = find(&state, &caller, &id).await?;
        object(served(&state)?.1, b).await
    };
    reply(found.await)
}

/// Cancels a batch that is still validating or running: no new line starts, the running
/// ones finish, then it is `cancelled`. A batch already ending or ended is answered as
/// it is.
#[utoipa::path(post, path = "/batches/{id}/cancel", tag = "batch", security(("api_key" = [])),
    params(("id" = String, Path, description = "The batch's id (`batch_…`)")),
    responses((status = 200, body = Batch), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 404 no such object of the caller's", body = tokenfab_wire::ErrorBody)))]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let cancelled = async {
        let (batches, store) = served(&state)?;
        let b = find(&state, &caller, &id).await?;
        store
            .move_batch(&b.id, &["validating", "in_progress"], "cancelling")
            .await
            .map_err(store_error)?;
        batches.wake();
        let b = find(&state, &caller, &id).await?;
        object(store, b).await
    };
    reply(cancelled.await)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// The id of the last batch of the previous page.
    after: Option<String>,
    /// 1 to 100 (default 20).
    limit: Option<i64>,
}

/// The caller's batches, newest first, a page at a time.
#[utoipa::path(get, path = "/batches", operation_id = "list_batches", tag = "batch", security(("api_key" = [])),
    params(Page),
    responses((status = 200, body = BatchList), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 404 no such object of the caller's", body = tokenfab_wire::ErrorBody)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let listed = async {
        let (_, store) = served(&state)?;
        let Query(page) =
            page.map_err(|e| HttpError::bad_request(None, format!("invalid query: {e}")))?;
        let limit = page.limit.unwrap_or(20);
        if !(1..=100).contains(&limit) {
            return Err(HttpError::bad_request(
                Some("limit"),
                "`limit` must be from 1 to 100",
            ));
        }
        // One more than asked says whether there are more.
        let mut rows = store
            .batches(caller.account_id(), page.after.as_deref(), limit + 1)
            .await
            .map_err(store_error)?;
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let mut data = Vec::with_capacity(rows.len());
        for b in rows {
            data.push(object(store, b).await?);
        }
        Ok(BatchList {
            object: "list".into(),
            first_id: data.first().map(|b| b.id.clone()),
            last_id: data.last().map(|b| b.id.clone()),
            has_more,
            data,
        })
    };
    match listed.await {
        Ok(l) => axum::Json(l).into_response(),
        Err(e) => e.into_response(),
    }
}
