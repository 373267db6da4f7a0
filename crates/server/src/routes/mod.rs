//! HTTP handlers, one file per API area. Handlers stay thin: parsing and validation live
//! in [`crate::job`] (local models) and [`proxy`] (upstream ones), the engine or the
//! upstream does the work, the platform does the accounting.

pub mod admin;
pub mod batch;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod files;
pub mod local;
pub mod models;
pub mod proxy;
pub mod rerank;
pub mod tokenize;
pub mod user;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokenfab_engine::scheduler::Priority;
use tokenfab_platform::limits::Standing;
use tokenfab_platform::store::Outcome;
use tokenfab_platform::{Admission, Caller, Used};

use crate::auth::{rate_headers, refusal};
use crate::error::HttpError;
use crate::state::{AppState, ModelEntry, ModelType};

/// Reads a JSON object body.
pub fn body_value(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Value, HttpError> {
    let bytes = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::payload_too_large(limit)
        } else {
            HttpError::bad_request(None, format!("could not read the request body: {e}"))
        }
    })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        HttpError::bad_request(None, format!("the request body is not valid JSON: {e}"))
    })?;
    if !v.is_object() {
        return Err(HttpError::bad_request(
            None,
            "the request body must be a JSON object",
        ));
    }
    Ok(v)
}

/// Reads a body into `T`, naming the field whose type is wrong.
pub fn typed<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, HttpError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            HttpError::bad_request(None, format!("invalid request body: {inner}"))
        } else {
            HttpError::bad_request(Some(&path), format!("invalid value for `{path}`: {inner}"))
        }
    })
}

/// Parses a JSON body into `T`.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, HttpError> {
    typed(body_value(body, limit)?)
}

/// A model request's body and the model it names, which must be of type `kind`.
pub fn model_request(
    body: Result<Bytes, BytesRejection>,
    state: &AppState,
    kind: ModelType,
) -> Result<(Value, Arc<ModelEntry>), HttpError> {
    let v = body_value(body, state.limits.max_body_bytes)?;
    let entry = model_entry(state, &v, kind)?;
    Ok((v, entry))
}

/// The model a request body names, which must be of type `kind`.
pub fn model_entry(
    state: &AppState,
    v: &Value,
    kind: ModelType,
) -> Result<Arc<ModelEntry>, HttpError> {
    let id = match v.get("model") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => {
            return Err(HttpError::bad_request(Some("model"), "`model` is required"));
        }
        Some(_) => {
            return Err(HttpError::bad_request(
                Some("model"),
                "`model` must be a string",
            ));
        }
    };
    crate::request_id::note_model(id);
    let entry = state
        .model(id)
        .ok_or_else(|| HttpError::model_not_found(id))?;
    crate::request_id::note_served(&entry.id);
    if entry.kind != kind {
        return Err(HttpError::bad_request(
            Some("model"),
            format!(
                "`{}` is a model of type {}: send it to {}",
                entry.id,
                entry.kind.as_str(),
                entry.kind.endpoint()
            ),
        ));
    }
    Ok(entry)
}

/// The answer to a chat or completions request naming an embedding model (a chat entry is
/// never an encoder's: the registry pairs them; said, not assumed).
pub fn embedding_model(entry: &ModelEntry) -> Response {
    HttpError::bad_request(
        Some("model"),
        format!(
            "`{}` is an embedding model: send it to /v1/embeddings",
            entry.id
        ),
    )
    .into_response()
}

/// A `YYYY-MM-DD` query parameter as days since the epoch (`default` when absent).
pub fn day(s: Option<&str>, param: &str, default: i64) -> Result<i64, HttpError> {
    match s {
        Some(s) => tokenfab_platform::days::parse(s).ok_or_else(|| {
            HttpError::bad_request(Some(param), format!("`{s}` is not a date: use YYYY-MM-DD"))
        }),
        None => Ok(default),
    }
}

/// How a request is let in and run: as a client's call, or as one line of a batch, which
/// the batch runner sends under the line's own ledger id (the batch price, no rate limits,
/// a hold a restart resumes: [`tokenfab_platform::Platform::admit_batch`]) and which the
/// engine runs at low priority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Lane {
    #[default]
    Interactive,
    Batch {
        ledger_id: String,
    },
}

impl Lane {
    pub fn priority(&self) -> Priority {
        match self {
            Lane::Interactive => Priority::Interactive,
            Lane::Batch { .. } => Priority::Batch,
        }
    }
}

/// The answer to a request for an upstream model on a path that serves only the models
/// tokenfab's engine runs (a batch's lines).
pub fn upstream_model(entry: &ModelEntry) -> Response {
    HttpError::bad_request(
        Some("model"),
        format!(
            "`{}` is served by an upstream server: a batch runs only models tokenfab's engine runs; send its requests to the API directly",
            entry.id
        ),
    )
    .into_response()
}

/// Lets a request in through the platform (rate limits, then the reservation of the most
/// it can cost), or answers why not. `None` when the server runs without a platform.
pub async fn admit(
    state: &AppState,
    caller: &Caller,
    model: &str,
    prompt: u64,
    most: u64,
) -> Result<Option<Admission>, Response> {
    admit_in(state, caller, &Lane::Interactive, model, prompt, most).await
}

/// [`admit`] in the given lane.
pub async fn admit_in(
    state: &AppState,
    caller: &Caller,
    lane: &Lane,
    model: &str,
    prompt: u64,
    most: u64,
) -> Result<Option<Admission>, Response> {
    let Some(p) = &state.platform else {
        return Ok(None);
    };
    let admitted = match lane {
        Lane::Interactive => p.admit(caller, model, prompt, most).await,
        Lane::Batch { ledger_id } => p.admit_batch(caller, model, prompt, most, ledger_id).await,
    };
    admitted.map(Some).map_err(refusal)
}

/// Adds the `x-ratelimit-*` headers of an admission to its answer.
pub fn with_rate_headers(
    mut resp: Response,
    standing: Option<(Option<Standing>, Option<Standing>)>,
) -> Response {
    if let Some((requests, tokens)) = standing {
        rate_headers(resp.headers_mut(), requests, tokens);
    }
    resp
}

/// Records a request's usage and charge; a ledger failure is logged, never shown to a
/// client that already has its answer.
pub async fn settle(admission: Option<Admission>, used: Used, outcome: Outcome) {
    if let Some(a) = admission
        && let Err(e) = a.settle(used, outcome).await
    {
        tracing::error!(%e, "could not record a request's usage");
    }
}

/// One server-sent event.
pub fn sse(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// A streaming response whose events come from `rx`.
pub fn sse_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    use axum::http::{HeaderValue, header};
    use futures_util::stream;
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut resp = Response::new(axum::body::Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
