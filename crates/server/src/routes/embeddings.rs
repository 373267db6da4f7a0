//! `POST /v1/embeddings` for a model run by tokenfab's own encoder: the inputs are
//! checked and tokenized off the async runtime, admitted and billed for their tokens, and
//! embedded by the encoder's thread, which packs concurrent requests into shared passes.
//!
//! Limits (OpenAI's): at most [`MAX_INPUTS`] inputs and [`MAX_TOKENS`] tokens per
//! request; each input at most the model's context (its `[CLS]` and `[SEP]` included),
//! refused beyond it. Texts are framed as the model's tokenizer frames them; token arrays
//! are embedded as given.

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;
use tokenfab_engine::EngineError;
use tokenfab_engine::encoder::{EmbedError, EncoderHandle};
use tokenfab_platform::store::{Outcome, Source};
use tokenfab_platform::{Admission, Caller, Used};
use tokenfab_wire::embeddings::{
    EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse, EncodingFormat, Vector,
};
use tokenfab_wire::usage::TokenUsage;

use crate::error::HttpError;
use crate::routes::{Lane, admit_in, settle, typed, with_rate_headers};
use crate::state::{AppState, ModelEntry};

/// Inputs per request at most.
pub const MAX_INPUTS: usize = 2048;
/// Tokens per request at most, all inputs together.
pub const MAX_TOKENS: usize = 300_000;

/// Answers an embeddings request for `entry`, served by `encoder`, admitted in `lane`
/// (the encoder packs every request alike: a batch's lines only pay the batch price).
pub async fn local(
    state: &AppState,
    caller: &Caller,
    lane: &Lane,
    entry: &ModelEntry,
    encoder: &EncoderHandle,
    body: Value,
) -> Response {
    let (handle, id) = (encoder.clone(), entry.id.clone());
    let Prepared {
        inputs,
        cut,
        format,
    } = match tokio::task::spawn_blocking(move || prepare(&id, &handle, body)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => {
            return HttpError::internal(format!("could not prepare the request: {e}"))
                .into_response();
        }
    };
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    crate::request_id::note_prompt(tokens as u64);
    let usage = TokenUsage::prompt(tokens as u64);
    let (vectors, standing) = match billed(
        state,
        caller,
        lane,
        entry,
        usage,
        "input",
        encoder.embed(inputs),
    )
    .await
    {
        Ok(x) => x,
        Err(refused) => return refused,
    };
    let vectors = vectors
        .into_iter()
        .map(|mut v| {
            if let Some(d) = cut {
                v.truncate(d);
                tokenfab_engine::encoder::normalize(&mut v);
            }
            v
        })
        .map(|v| match format {
            EncodingFormat::Float => Vector::Float(v),
            EncodingFormat::Base64 => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        })
        .collect();
    let answer = EmbeddingsResponse::new(entry.id.clone(), vectors, usage);
    with_rate_headers(axum::Json(answer).into_response(), standing)
}

/// A checked request, ready for the encoder.
pub(crate) struct Prepared {
    /// Each input's token ids.
    pub(crate) inputs: Vec<Vec<u32>>,
    /// The width the vectors are cut to.
    pub(crate) cut: Option<usize>,
    pub(crate) format: EncodingFormat,
}

/// Checks and tokenizes a request body for `encoder`, serving model `id` (blocking: the
/// inputs may be long).
pub(crate) fn prepare(
    id: &str,
    encoder: &EncoderHandle,
    body: Value,
) -> Result<Prepared, HttpError> {
    let req: EmbeddingsRequest = typed(body)?;
    let cut = dimensions(id, encoder.config(), req.dimensions)?;
    let input = req
        .input
        .ok_or_else(|| HttpError::bad_request(Some("input"), "`input` is required"))?;
    Ok(Prepared {
        inputs: tokenize(encoder, input)?,
        cut,
        format: req.encoding_format.unwrap_or_default(),
    })
}

/// The size the vectors are cut to, if `dimensions` asks for one below the model's
/// width: only a model trained to be cut (Matryoshka representation learning) may be,
/// to any size from 1 up (its trained sizes are the ones that keep the most).
fn dimensions(
    id: &str,
    config: &tokenfab_engine::encoder::EncoderConfig,
    asked: Option<u64>,
) -> Result<Option<usize>, HttpError> {
    let width = config.width;
    match asked {
        None => Ok(None),
        Some(d) if d == width as u64 => Ok(None),
        Some(_) if config.dimensions.is_empty() => Err(HttpError::bad_request(
            Some("dimensions"),
            format!(
                "`{id}` gives vectors of {width} dimensions and was not trained to be truncated: `dimensions` must be {width} or absent",
            ),
        )),
        Some(d) if d == 0 || d > width as u64 => Err(HttpError::bad_request(
            Some("dimensions"),
            format!(
                "`dimensions` must be from 1 to {width} for `{id}` (trained sizes: {width}, {})",
                config
                    .dimensions
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        Some(d) => Ok(Some(d as usize)),
    }
}

/// An encoder request's way through the platform: `usage` admitted for `entry`, `work`
/// run, then settled (charged when it succeeded, recorded only when it failed). The
/// answer's rate-limit standing comes back with the result; an engine refusal is a 400
/// naming `param`.
pub(crate) async fn billed<T>(
    state: &AppState,
    caller: &Caller,
    lane: &Lane,
    entry: &ModelEntry,
    usage: TokenUsage,
    param: &str,
    work: impl std::future::Future<Output = Result<T, EmbedError>>,
) -> Result<(T, Standing), Response> {
    let admission = admit_in(state, caller, lane, &entry.id, usage.prompt, 0).await?;
    let standing = admission.as_ref().map(Admission::standing);
    let used = Used {
        tokens: usage,
        source: Source::Engine,
    };
    match work.await {
        Ok(v) => {
            settle(admission, used, Outcome::Done).await;
            Ok((v, standing))
        }
        Err(e) => {
            settle(admission, used, Outcome::Error).await;
            let err = match e {
                EmbedError::Engine(EngineError::BadRequest(m)) => {
                    HttpError::bad_request(Some(param), m)
                }
                EmbedError::Submit(s) => HttpError::overloaded(s.to_string()),
                EmbedError::Engine(other) => HttpError::internal(other.to_string()),
            };
            Err(with_rate_headers(err.into_response(), standing))
        }
    }
}

/// The answer's rate-limit standing ([`with_rate_headers`]).
pub(crate) type Standing = Option<(
    Option<tokenfab_platform::limits::Standing>,
    Option<tokenfab_platform::limits::Standing>,
)>;

/// The token ids of each input, checked against the request limits and the model's
/// context; the first input that does not fit is named.
fn tokenize(encoder: &EncoderHandle, input: EmbeddingInput) -> Result<Vec<Vec<u32>>, HttpError> {
    let tokenizer = encoder.tokenizer();
    let inputs: Vec<Vec<u32>> = match input {
        EmbeddingInput::Text(t) => vec![text(tokenizer, &t, "input")?],
        EmbeddingInput::Texts(ts) => {
            check_count(ts.len())?;
            ts.iter()
                .enumerate()
                .map(|(i, t)| text(tokenizer, t, &format!("input[{i}]")))
                .collect::<Result<_, _>>()?
        }
        EmbeddingInput::Tokens(t) => vec![t],
        EmbeddingInput::TokenLists(ls) => {
            check_count(ls.len())?;
            ls
        }
    };
    let context = encoder.config().context_length;
    let mut total = 0;
    for (i, t) in inputs.iter().enumerate() {
        let name = if inputs.len() == 1 {
            "input".to_owned()
        } else {
            format!("input[{i}]")
        };
        if t.is_empty() {
            return Err(HttpError::bad_request(
                Some(&name),
                format!("`{name}` is empty"),
            ));
        }
        if t.len() > context {
            return Err(HttpError::context_exceeded(
                &name,
                format!(
                    "`{name}` is {} tokens, more than the model's {context}",
                    t.len()
                ),
            ));
        }
        total += t.len();
    }
    if total > MAX_TOKENS {
        return Err(HttpError::bad_request(
            Some("input"),
            format!(
                "the inputs are {total} tokens together, more than the {MAX_TOKENS} a request may hold"
            ),
        ));
    }
    Ok(inputs)
}

fn check_count(n: usize) -> Result<(), HttpError> {
    if n == 0 {
        return Err(HttpError::bad_request(
            Some("input"),
            "`input` is an empty list",
        ));
    }
    if n > MAX_INPUTS {
        return Err(HttpError::bad_request(
            Some("input"),
            format!("`input` holds {n} inputs, more than the {MAX_INPUTS} a request may hold"),
        ));
    }
    Ok(())
}

/// A text's tokens, framed; an empty text is refused as OpenAI refuses it.
fn text(
    tokenizer: &tokenfab_engine::tokenizer::Tokenizer,
    t: &str,
    name: &str,
) -> Result<Vec<u32>, HttpError> {
    if t.is_empty() {
        return Err(HttpError::bad_request(
            Some(name),
            format!("`{name}` is an empty string"),
        ));
    }
    Ok(tokenizer.encode(t, true, false))
}
