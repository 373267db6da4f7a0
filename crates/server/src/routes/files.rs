//! `POST /v1/files`, `GET /v1/files/{id}` and `GET /v1/files/{id}/content`: the files of
//! the batch API, per account. An upload is OpenAI's multipart form (`file`, `purpose`);
//! only `purpose: "batch"` is taken, as that is what this server does with files.

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Extension, Multipart, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use tokenfab_platform::store::{FileRecord, Store, unix_now};
use tokenfab_platform::{Caller, keys};
use tokenfab_wire::batch::FileObject;

use crate::batch::Batches;
use crate::error::HttpError;
use crate::state::AppState;

/// The batch API's parts (its routes exist only on a server that has them).
pub(crate) fn served(state: &AppState) -> Result<(&Arc<Batches>, &Store), HttpError> {
    match (&state.batches, &state.platform) {
        (Some(b), Some(p)) => Ok((b, &p.store)),
        _ => Err(HttpError::internal(
            "the batch API is configured without a ledger to keep its records",
        )),
    }
}

pub(crate) fn file_object(f: &FileRecord) -> FileObject {
    FileObject {
        id: f.id.clone(),
        object: "file".into(),
        bytes: f.bytes as u64,
        created_at: f.created_at as u64,
        filename: f.filename.clone(),
        purpose: f.purpose.clone(),
    }
}

fn store_error(e: impl std::fmt::Display) -> HttpError {
    HttpError::internal(format!("the file store failed: {e}"))
}

/// Uploads a JSONL file of requests (`purpose`: `batch`) as multipart/form-data.
#[utoipa::path(post, path = "/files", tag = "batch", security(("api_key" = [])),
    request_body(content = tokenfab_wire::batch::FileUpload, content_type = "multipart/form-data"),
    responses((status = 200, body = FileObject), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 404 no such object of the caller's", body = tokenfab_wire::ErrorBody)))]
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    upload_file(&state, &caller, form)
        .await
        .map_or_else(IntoResponse::into_response, |f| {
            axum::Json(file_object(&f)).into_response()
        })
}

async fn upload_file(
    state: &AppState,
    caller: &Caller,
    form: Result<Multipart, MultipartRejection>,
) -> Result<FileRecord, HttpError> {
    let (batches, store) = served(state)?;
    let limit = batches.cfg.max_file_bytes;
    let too_large = || {
        HttpError::bad_request(
            Some("file"),
            format!("the file is larger than the {limit} bytes a file may be"),
        )
    };
    let mut form = form.map_err(|e| {
        HttpError::bad_request(None, format!("send the file as multipart/form-data: {e}"))
    })?;
    let (mut file, mut purpose) = (None, None);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(too_large());
            }
            Err(e) => {
                return Err(HttpError::bad_request(
                    None,
                    format!("the form could not be read: {e}"),
                ));
            }
        };
        match field.name() {
            Some("purpose") => purpose = Some(field.text().await.unwrap_or_default()),
            Some("file") => {
                let name = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let bytes = field.bytes().await.map_err(|e| {
                    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                        too_large()
                    } else {
                        HttpError::bad_request(
                            Some("file"),
                            format!("the file could not be read: {e}"),
                        )
                    }
                })?;
                file = Some((name, bytes));
            }
            _ => {}
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(HttpError::bad_request(
                Some("purpose"),
                format!(
                    "`purpose` must be `batch` here (files serve the batch API), not `{other}`"
                ),
            ));
        }
        None => {
            return Err(HttpError::bad_request(
                Some("purpose"),
                "`purpose` is required",
            ));
        }
    }
    let Some((filename, bytes)) = file else {
        return Err(HttpError::bad_request(Some("file"), "`file` is required"));
    };
    if bytes.is_empty() {
        return Err(HttpError::bad_request(Some("file"), "the file is empty"));
    }
    if bytes.len() > limit {
        return Err(too_large());
    }
    let id = format!("file-{}", keys::random_id().map_err(store_error)?);
    let record = FileRecord {
        id: id.clone(),
        account_id: caller.account_id(),
        bytes: bytes.len() as i64,
        filename,
        purpose: "batch".into(),
        created_at: unix_now(),
    };
    batches
        .write(&id, bytes.to_vec())
        .await
        .map_err(store_error)?;
    store.add_file(&record).await.map_err(store_error)?;
    Ok(record)
}

/// The caller's file `id`.
pub(crate) async fn find(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<FileRecord, HttpError> {
    let (_, store) = served(state)?;
    store
        .file(caller.account_id(), id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| HttpError::object_not_found("file", id))
}

/// One of the caller's files.
#[utoipa::path(get, path = "/files/{id}", operation_id = "get_file", tag = "batch", security(("api_key" = [])),
    params(("id" = String, Path, description = "The file's id (`file-…`)")),
    responses((status = 200, body = FileObject), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 404 no such object of the caller's", body = tokenfab_wire::ErrorBody)))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match find(&state, &caller, &id).await {
        Ok(f) => axum::Json(file_object(&f)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A file's bytes: an uploaded input, or a batch's output or error file (JSONL).
#[utoipa::path(get, path = "/files/{id}/content", tag = "batch", security(("api_key" = [])),
    params(("id" = String, Path, description = "The file's id (`file-…`)")),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = String), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 404 no such object of the caller's", body = tokenfab_wire::ErrorBody)))]
pub async fn content(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let read = async {
        let f = find(&state, &caller, &id).await?;
        let (batches, _) = served(&state)?;
        batches.read(&f.id).await.map_err(store_error)
    };
    match read.await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => e.into_response(),
    }
}
