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
use tokenfab_wire::rerank::{
    DocumentText, RerankDocument, RerankRequest, RerankResponse, RerankResult,
};
use tokenfab_wire::usage::TokenUsage;

use crate::error::HttpError;
use crate::request_id::RequestId;
use crate::routes::embeddings::{MAX_TOKENS, Standing, billed};
use crate::routes::{Lane, typed, with_rate_headers};
use crate::state::{AppState, ModelEntry};

/// Documents per request at most.
pub const MAX_DOCUMENTS: usize = 1024;
/// Chunks a document is scored in at most, unless the request says otherwise.
pub const MAX_CHUNKS: usize = 64;
const DEFAULT_OVERLAP: usize = 80;

/// A request's pairs: every chunk of every document beside the query, and which
/// document each belongs to.
pub(crate) struct Pairs {
    pairs: Vec<(Vec<u32>, Vec<u32>)>,
    document: Vec<usize>,
    pub(crate) tokens: usize,
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
    let handle = encoder.clone();
    let (req, documents, pairs) =
        match tokio::task::spawn_blocking(move || prepare(&handle, body)).await {
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
    let (scores, standing) = match billed(
        state,
        caller,
        &Lane::Interactive,
        entry,
        usage,
        "documents",
        work,
    )
    .await
    {
        Ok(x) => x,
        Err(refused) => return refused,
    };
    let mut best = vec![f32::NEG_INFINITY; documents.len()];
    for (&doc, score) in pairs.document.iter().zip(scores) {
        best[doc] = best[doc].max(score);
    }
    let scores = best.into_iter().map(f64::from);
    answer(&req, &documents, scores, usage, rid, standing)
}

/// A request body checked and made into pairs for `encoder` (blocking: the documents may
/// be long): the request, its documents, and their pairs.
pub(crate) fn prepare(
    encoder: &EncoderHandle,
    body: Value,
) -> Result<(RerankRequest, Vec<RerankDocument>, Pairs), HttpError> {
    let req: RerankRequest = typed(body)?;
    let (query, documents) = checked(&req)?;
    let texts: Vec<&str> = documents.iter().map(|d| d.text()).collect();
    let pairs = pairs(
        encoder,
        &query,
        &texts,
        req.max_chunks_per_doc,
        req.overlap_tokens,
    )?;
    Ok((req, documents, pairs))
}

/// The query beside each document's chunks, checked against the model's context.
fn pairs(
    encoder: &EncoderHandle,
    query: &str,
    documents: &[&str],
    max_chunks: Option<u64>,
    overlap: Option<u64>,
) -> Result<Pairs, HttpError> {
    let e = encoder.encoder();
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

/// What a chat model judging relevance is told (Qwen3-Reranker's instruction): the score
/// is the probability of "yes" against "no" as its answer's first token.
const JUDGE_SYSTEM: &str = "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".";
const JUDGE_INSTRUCT: &str = "Given a search query, judge whether the document answers it";

/// The judge's prompt for each document, its "yes" and "no" tokens, and the tokens all
/// prompts hold.
struct Judged {
    prompts: Vec<Vec<u32>>,
    yes: u32,
    no: u32,
    tokens: usize,
}

/// Answers a rerank request for `entry`, a chat model run as a relevance judge: one
/// prompt per document through the model's own template, each answered by one step whose
/// "yes" and "no" log-probabilities give the score, `P(yes) / (P(yes) + P(no))`. The
/// prompts share their beginning (instruction and query), which the engine computes once
/// and serves the others from its prefix cache.
pub async fn judge(
    state: &AppState,
    caller: &Caller,
    entry: &Arc<ModelEntry>,
    model: &Arc<crate::state::ServedModel>,
    body: Value,
    rid: &RequestId,
) -> Response {
    let req: RerankRequest = match typed(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (query, documents) = match checked(&req) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if req.max_chunks_per_doc.is_some() || req.overlap_tokens.is_some() {
        let param = if req.max_chunks_per_doc.is_some() {
            "max_chunks_per_doc"
        } else {
            "overlap_tokens"
        };
        return HttpError::bad_request(
            Some(param),
            format!(
                "`{}` judges whole documents: `{param}` applies to cross-encoders",
                entry.id
            ),
        )
        .into_response();
    }
    let served = model.clone();
    let texts: Vec<String> = documents.iter().map(|d| d.text().to_owned()).collect();
    let built = tokio::task::spawn_blocking(move || judge_prompts(&served, &query, &texts));
    let judged = match built.await {
        Ok(Ok(j)) => j,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => {
            return HttpError::internal(format!("could not prepare the request: {e}"))
                .into_response();
        }
    };
    crate::request_id::note_prompt(judged.tokens as u64);
    // Priced per input token as SiliconFlow prices rerank: the prefix cache saves the
    // work, and the answer says how much of it.
    let usage = TokenUsage::prompt(judged.tokens as u64);
    let work = judge_all(model, judged);
    let ((scores, cached), standing) = match billed(
        state,
        caller,
        &Lane::Interactive,
        entry,
        usage,
        "documents",
        work,
    )
    .await
    {
        Ok(x) => x,
        Err(refused) => return refused,
    };
    let usage = TokenUsage { cached, ..usage };
    answer(&req, &documents, scores, usage, rid, standing)
}

/// The answer of either kind of reranker: each document's score in request order, sorted,
/// cut to `top_n`, with the texts when asked.
fn answer(
    req: &RerankRequest,
    documents: &[RerankDocument],
    scores: impl IntoIterator<Item = f64>,
    usage: TokenUsage,
    rid: &RequestId,
    standing: Standing,
) -> Response {
    let with_text = req.return_documents.unwrap_or(false);
    let results = scores
        .into_iter()
        .enumerate()
        .map(|(index, relevance_score)| RerankResult {
            index,
            relevance_score,
            document: with_text.then(|| DocumentText {
                text: documents[index].text().to_owned(),
            }),
        })
        .collect();
    let top_n = req.top_n.map(|n| n as usize);
    let answer = RerankResponse::new(format!("rerank-{}", rid.0), results, top_n, usage);
    with_rate_headers(axum::Json(answer).into_response(), standing)
}

/// The query and documents of a request, or the 400 naming what is missing or out of range.
fn checked(req: &RerankRequest) -> Result<(String, Vec<RerankDocument>), HttpError> {
    let (Some(query), Some(documents)) = (req.query.clone(), req.documents.clone()) else {
        let missing = if req.query.is_none() {
            "query"
        } else {
            "documents"
        };
        return Err(HttpError::bad_request(
            Some(missing),
            format!("`{missing}` is required"),
        ));
    };
    if documents.is_empty() || documents.len() > MAX_DOCUMENTS {
        return Err(HttpError::bad_request(
            Some("documents"),
            format!(
                "`documents` holds {} documents; a request takes 1 to {MAX_DOCUMENTS}",
                documents.len()
            ),
        ));
    }
    if req.top_n == Some(0) {
        return Err(HttpError::bad_request(
            Some("top_n"),
            "`top_n` must be at least 1",
        ));
    }
    if query.is_empty() {
        return Err(HttpError::bad_request(
            Some("query"),
            "`query` is an empty string",
        ));
    }
    Ok((query, documents))
}

fn judge_prompts(
    model: &crate::state::ServedModel,
    query: &str,
    documents: &[String],
) -> Result<Judged, HttpError> {
    let Some(template) = &model.template else {
        return Err(HttpError::bad_request(
            Some("model"),
            "the model has no chat template, which judging relevance needs",
        ));
    };
    let tok = &model.tokenizer;
    let single = |word: &str| match tok.encode(word, false, false).as_slice() {
        [id] => Ok(*id),
        _ => Err(HttpError::internal(format!(
            "the model's vocabulary has no single token for {word:?}, which judging relevance needs"
        ))),
    };
    let (yes, no) = (single("yes")?, single("no")?);
    let context = model.engine.context_length();
    let mut out = Judged {
        prompts: Vec::with_capacity(documents.len()),
        yes,
        no,
        tokens: 0,
    };
    for (i, d) in documents.iter().enumerate() {
        let message = |role: &str, content: String| tokenfab_engine::template::TemplateMessage {
            role: role.into(),
            content,
            extra: Default::default(),
        };
        let conversation = [
            message("system", JUDGE_SYSTEM.into()),
            message(
                "user",
                format!("<Instruct>: {JUDGE_INSTRUCT}\n<Query>: {query}\n<Document>: {d}"),
            ),
        ];
        let text = template
            .render(&conversation, true, &Default::default())
            .map_err(|e| HttpError::internal(format!("the model's template: {e}")))?;
        let prompt = crate::job::encode_prompt(tok, &text);
        if prompt.len() + 1 > context {
            let name = format!("documents[{i}]");
            return Err(HttpError::context_exceeded(
                &name,
                format!(
                    "`{name}` and the query make a judging prompt of {} tokens, more than the model's {context}",
                    prompt.len()
                ),
            ));
        }
        out.tokens += prompt.len();
        out.prompts.push(prompt);
    }
    Ok(out)
}

/// Every prompt's one judging step, in the engine's batches: the scores in order, and
/// how many prompt tokens the prefix cache served.
async fn judge_all(
    model: &crate::state::ServedModel,
    judged: Judged,
) -> Result<(Vec<f64>, u64), tokenfab_engine::encoder::EmbedError> {
    use tokenfab_engine::encoder::EmbedError;
    use tokenfab_engine::scheduler::{Event, GenerateRequest};
    let mut receivers = Vec::with_capacity(judged.prompts.len());
    for prompt in judged.prompts {
        let req = GenerateRequest {
            prompt,
            sampling: tokenfab_engine::sampler::SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            fallback_seed: 0,
            max_tokens: 1,
            stop: Vec::new(),
            logprobs: Some(0),
            logprobs_of: vec![judged.yes, judged.no],
            prompt_logprobs: None,
            thinking_budget: None,
            split_thought: false,
            constraint: None,
            shown: Vec::new(),
            priority: Default::default(),
        };
        receivers.push(model.engine.submit(req).map_err(EmbedError::Submit)?);
    }
    let mut scores = Vec::with_capacity(receivers.len());
    let mut cached = 0;
    for mut rx in receivers {
        let mut score = None;
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Finished { usage, .. } => cached += usage.cached,
                Event::Token {
                    logprob: Some(lp), ..
                } => {
                    let of = |id| {
                        lp.top
                            .iter()
                            .find(|(t, _)| *t == id)
                            .map(|&(_, l)| l as f64)
                    };
                    if let (Some(y), Some(n)) = (of(judged.yes), of(judged.no)) {
                        // P(yes) / (P(yes) + P(no)), from log-probabilities without overflow.
                        score = Some(1.0 / (1.0 + (n - y).exp()));
                    }
                }
                Event::Failed(m) => {
                    return Err(EmbedError::Engine(
                        tokenfab_engine::EngineError::BadRequest(m),
                    ));
                }
                _ => {}
            }
        }
        scores.push(score.ok_or_else(|| {
            EmbedError::Engine(tokenfab_engine::EngineError::BadRequest(
                "the judge's step ended without its log-probabilities".into(),
            ))
        })?);
    }
    Ok((scores, cached))
}
