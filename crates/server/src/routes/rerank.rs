//! `POST /v1/rerank` for a cross-encoder run by tokenfab's own encoder: every document
//! is scored beside the query in one pair (`[CLS] query [SEP] document [SEP]`), the
//! pairs of a request and of concurrent requests packed into shared passes.
//!
//! A document too long to sit beside the query is cut into chunks of what fits, each
//! overlapping the one before by `overlap_tokens` (default 80, as SiliconFlow's), at most
//! `max_chunks_per_doc` of them (default [`MAX_CHUNKS`]; later text is not scored), and
//! scores as its best chunk. Limits: at most [`MAX_DOCUMENTS`] documents and
//! [`super::embeddings::MAX_TOKENS`] tokens of pairs per request.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokenfab_engine::encoder::EncoderHandle;
use tokenfab_platform::Caller;
use tokenfab_wire::rerank::{DocumentText, RerankRequest, RerankResponse, RerankResult};
use tokenfab_wire::usage::TokenUsage;

use crate::error::HttpError;
use crate::request_id::RequestId;
use crate::routes::embeddings::{MAX_TOKENS, billed};
use crate::routes::{typed, with_rate_headers};
use crate::state::{AppState, ModelEntry};

/// Documents per request at most.
pub const MAX_DOCUMENTS: usize = 1024;
/// Chunks a document is scored in at most, unless the request says otherwise.
pub const MAX_CHUNKS: usize = 64;
const DEFAULT_OVERLAP: usize = 80;

/// A request's pairs: every chunk of every document beside the query, and which
/// document each belongs to.
struct Pairs {
    pairs: Vec<(Vec<u32>, Vec<u32>)>,
    document: Vec<usize>,
    tokens: usize,
}

/// Answers a rerank request for `entry`, a cross-encoder served by `encoder`.
pub async fn local(
    state: &AppState,
    caller: &Caller,
    entry: &Arc<ModelEntry>,
    encoder: &EncoderHandle,
    body: Value,
    rid: &RequestId,
) -> Response {
    let req: RerankRequest = match typed(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (Some(query), Some(documents)) = (req.query.clone(), req.documents.clone()) else {
        let missing = if req.query.is_none() {
            "query"
        } else {
            "documents"
        };
        return HttpError::bad_request(Some(missing), format!("`{missing}` is required"))
            .into_response();
    };
    if documents.is_empty() || documents.len() > MAX_DOCUMENTS {
        return HttpError::bad_request(
            Some("documents"),
            format!(
                "`documents` holds {} documents; a request takes 1 to {MAX_DOCUMENTS}",
                documents.len()
            ),
        )
        .into_response();
    }
    if req.top_n == Some(0) {
        return HttpError::bad_request(Some("top_n"), "`top_n` must be at least 1").into_response();
    }
    let handle = encoder.clone();
    let texts: Vec<String> = documents.iter().map(|d| d.text().to_owned()).collect();
    let (chunks, overlap) = (req.max_chunks_per_doc, req.overlap_tokens);
    let built =
        tokio::task::spawn_blocking(move || pairs(&handle, &query, &texts, chunks, overlap));
    let pairs = match built.await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => {
            return HttpError::internal(format!("could not prepare the request: {e}"))
                .into_response();
        }
    };
    crate::request_id::note_prompt(pairs.tokens as u64);
    let usage = TokenUsage::prompt(pairs.tokens as u64);
    let work = encoder.score(pairs.pairs);
    let (scores, standing) = match billed(state, caller, entry, usage, "documents", work).await {
        Ok(x) => x,
        Err(refused) => return refused,
    };
    let mut best = vec![f32::NEG_INFINITY; documents.len()];
    for (&doc, score) in pairs.document.iter().zip(scores) {
        best[doc] = best[doc].max(score);
    }
    let with_text = req.return_documents.unwrap_or(false);
    let results = best
        .into_iter()
        .enumerate()
        .map(|(index, score)| RerankResult {
            index,
            relevance_score: score as f64,
            document: with_text.then(|| DocumentText {
                text: documents[index].text().to_owned(),
            }),
        })
        .collect();
    let top_n = req.top_n.map(|n| n as usize);
    let answer = RerankResponse::new(format!("rerank-{}", rid.0), results, top_n, usage);
    with_rate_headers(axum::Json(answer).into_response(), standing)
}

/// The query beside each document's chunks, checked against the model's context.
fn pairs(
    encoder: &EncoderHandle,
    query: &str,
    documents: &[String],
    max_chunks: Option<u64>,
    overlap: Option<u64>,
) -> Result<Pairs, HttpError> {
    let e = encoder.encoder();
    if query.is_empty() {
        return Err(HttpError::bad_request(
            Some("query"),
            "`query` is an empty string",
        ));
    }
    let q = e.tokenizer.encode(query, false, false);
    let context = e.config.context_length;
    // [CLS] query [SEP] chunk [SEP]
    let room = context.saturating_sub(q.len() + 3);
    if room == 0 {
        return Err(HttpError::context_exceeded(
            "query",
            format!(
                "`query` is {} tokens, leaving no room for a document in the model's {context}",
                q.len()
            ),
        ));
    }
    let max_chunks = max_chunks.map_or(MAX_CHUNKS, |m| m as usize);
    if max_chunks == 0 {
        return Err(HttpError::bad_request(
            Some("max_chunks_per_doc"),
            "`max_chunks_per_doc` must be at least 1",
        ));
    }
    let overlap = overlap.map_or(DEFAULT_OVERLAP.min(room / 2), |o| o as usize);
    if overlap >= room {
        return Err(HttpError::bad_request(
            Some("overlap_tokens"),
            format!(
                "`overlap_tokens` must be less than the {room} tokens a chunk holds beside this query"
            ),
        ));
    }
    let mut out = Pairs {
        pairs: Vec::new(),
        document: Vec::new(),
        tokens: 0,
    };
    for (i, text) in documents.iter().enumerate() {
        let d = e.tokenizer.encode(text, false, false);
        let mut start = 0;
        for _ in 0..max_chunks {
            let end = (start + room).min(d.len());
            let pair = e.pair(&q, &d[start..end]);
            out.tokens += pair.0.len();
            out.pairs.push(pair);
            out.document.push(i);
            if end == d.len() {
                break;
            }
            start = end - overlap;
        }
    }
    if out.tokens > MAX_TOKENS {
        return Err(HttpError::bad_request(
            Some("documents"),
            format!(
                "the query and documents are {} tokens of pairs, more than the {MAX_TOKENS} a request may hold",
                out.tokens
            ),
        ));
    }
    Ok(out)
}
