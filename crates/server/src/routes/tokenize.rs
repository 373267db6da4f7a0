//! `POST /tokenize` and `POST /detokenize`: a model's own tokenizer over HTTP, in vLLM's
//! and llama-server's shapes (see `tokenfab_wire::tokenize`). A conversation is rendered
//! with the model's chat template and tokenized exactly as a chat request's prompt is, so
//! `count` is the `prompt_tokens` such a request would report. No engine work is done and
//! nothing is billed; the routes sit behind the API keys like the rest of the API.
//!
//! The model is the request's `model`, or, as llama-server has none, the only model
//! served. An upstream model answers only when its configuration names a `tokenizer`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use tokenfab_engine::template::ChatTemplate;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_wire::tokenize::{
    DetokenizeRequest, DetokenizeResponse, Piece, TokenOut, TokenizeRequest, TokenizeResponse,
};

use crate::error::HttpError;
use crate::job::{encode_prompt, template_messages};
use crate::routes::{body_value, typed};
use crate::state::{AppState, ModelEntry, Serve};

/// What tokenizing for a model needs: the model, its tokenizer and its context length.
struct Tokenizing {
    entry: Arc<ModelEntry>,
    tokenizer: Arc<Tokenizer>,
    context: usize,
}

impl Tokenizing {
    fn template(&self) -> Option<&ChatTemplate> {
        match &self.entry.serve {
            Serve::Local(m) => m.template.as_ref(),
            Serve::Upstream(u) => u.counter.as_ref().and_then(|c| c.template.as_ref()),
            Serve::Encoder(_) => None,
        }
    }
}

/// The model a request names, or the only one served.
fn model(state: &AppState, id: Option<&str>) -> Result<Tokenizing, HttpError> {
    let entry = match id {
        Some(id) => {
            crate::request_id::note_model(id);
            let entry = state
                .model(id)
                .ok_or_else(|| HttpError::model_not_found(id))?;
            crate::request_id::note_served(&entry.id);
            entry
        }
        None => {
            let models = state.models();
            match models.as_slice() {
                [only] => only.clone(),
                _ => {
                    return Err(HttpError::bad_request(
                        Some("model"),
                        format!(
                            "`model` is required: this server serves {} models",
                            models.len()
                        ),
                    ));
                }
            }
        }
    };
    let (tokenizer, context) = match &entry.serve {
        Serve::Local(m) => (m.tokenizer.clone(), m.engine.context_length()),
        Serve::Encoder(e) => (e.tokenizer().clone(), e.config().context_length),
        Serve::Upstream(u) => match &u.counter {
            Some(c) => (c.tokenizer.clone(), u.context_length),
            None => {
                return Err(HttpError::bad_request(
                    Some("model"),
                    format!(
                        "`{}` is served upstream without a `tokenizer` in its configuration: ask its server",
                        entry.id
                    ),
                ));
            }
        },
    };
    Ok(Tokenizing {
        entry,
        tokenizer,
        context,
    })
}

/// vLLM's request fields that would change the tokens and that this route does not
/// honour: refused by name rather than counted without them.
const UNHONOURED: [&str; 4] = [
    "tools",
    "chat_template",
    "continue_final_message",
    "documents",
];

/// A prompt or chat messages as the model's tokens (vLLM's and llama-server's shapes).
#[utoipa::path(post, path = "/tokenize", tag = "tokenizer", security(("api_key" = [])),
    request_body = tokenfab_wire::tokenize::TokenizeRequest,
    responses((status = 200, body = tokenfab_wire::tokenize::TokenizeResponse), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 402 balance, 404 model, 429 rate limit", body = tokenfab_wire::ErrorBody), (status = "5XX", description = "503 overloaded (with `retry-after`), 502/504 upstream failures", body = tokenfab_wire::ErrorBody)))]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenizeResponse>, HttpError> {
    let body = body_value(body, state.limits.max_body_bytes)?;
    if let Some(field) = UNHONOURED
        .iter()
        .find(|f| body.get(**f).is_some_and(|v| !v.is_null()))
    {
        return Err(HttpError::bad_request(
            Some(field),
            format!("`{field}` is not supported by /tokenize; send the conversation as it stands"),
        ));
    }
    let req: TokenizeRequest = typed(body)?;
    let m = model(&state, req.model.as_deref())?;
    if req.add_special.is_some() && req.add_special_tokens.is_some() {
        return Err(HttpError::bad_request(
            Some("add_special"),
            "send `add_special` (llama-server's name) or `add_special_tokens` (vLLM's), not both",
        ));
    }
    let add_special = req.add_special.or(req.add_special_tokens);
    let parse_special = req.parse_special.unwrap_or(true);
    let ids = match (&req.prompt, &req.content, &req.messages) {
        (Some(text), None, None) => {
            // vLLM frames a prompt by default, llama-server does not.
            m.tokenizer
                .encode(text, add_special.unwrap_or(true), parse_special)
        }
        (None, Some(text), None) => {
            m.tokenizer
                .encode(text, add_special.unwrap_or(false), parse_special)
        }
        (None, None, Some(messages)) => {
            let template = m.template().ok_or_else(|| {
                HttpError::bad_request(
                    Some("messages"),
                    format!("model `{}` has no chat template", m.entry.id),
                )
            })?;
            let conversation = template_messages(messages)?;
            let text = template
                .render(
                    &conversation,
                    req.add_generation_prompt.unwrap_or(true),
                    &req.chat_template_kwargs.clone().unwrap_or_default(),
                )
                .map_err(|e| HttpError::bad_request(Some("messages"), e.to_string()))?;
            match add_special {
                // What a chat request's prompt is, token for token.
                None => encode_prompt(&m.tokenizer, &text),
                Some(add) => m.tokenizer.encode(&text, add, parse_special),
            }
        }
        (None, None, None) => {
            return Err(HttpError::bad_request(
                Some("prompt"),
                "send the text as `prompt` (or `content`), or a conversation as `messages`",
            ));
        }
        _ => {
            return Err(HttpError::bad_request(
                Some("prompt"),
                "send one of `prompt`, `content` and `messages`",
            ));
        }
    };
    let token_strs = req.return_token_strs.unwrap_or(false).then(|| {
        ids.iter()
            .map(|&id| m.tokenizer.token_text(id).unwrap_or_default().to_owned())
            .collect()
    });
    let with_pieces = req.with_pieces.unwrap_or(false);
    let tokens = ids
        .iter()
        .map(|&id| {
            if with_pieces {
                TokenOut::Piece {
                    id,
                    piece: Piece::of(m.tokenizer.token_bytes(id)),
                }
            } else {
                TokenOut::Id(id)
            }
        })
        .collect();
    Ok(Json(TokenizeResponse {
        tokens,
        count: ids.len(),
        max_model_len: m.context,
        token_strs,
    }))
}

/// Token ids back to text.
#[utoipa::path(post, path = "/detokenize", tag = "tokenizer", security(("api_key" = [])),
    request_body = tokenfab_wire::tokenize::DetokenizeRequest,
    responses((status = 200, body = tokenfab_wire::tokenize::DetokenizeResponse), (status = "4XX", description = "An OpenAI-shaped error: 400 bad request, 401 no or bad key, 402 balance, 404 model, 429 rate limit", body = tokenfab_wire::ErrorBody), (status = "5XX", description = "503 overloaded (with `retry-after`), 502/504 upstream failures", body = tokenfab_wire::ErrorBody)))]
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DetokenizeResponse>, HttpError> {
    let req: DetokenizeRequest = typed(body_value(body, state.limits.max_body_bytes)?)?;
    let m = model(&state, req.model.as_deref())?;
    let tokens = req
        .tokens
        .ok_or_else(|| HttpError::bad_request(Some("tokens"), "`tokens` is required"))?;
    let vocab = m.tokenizer.vocab_size();
    if let Some(i) = tokens.iter().position(|&t| t as usize >= vocab) {
        return Err(HttpError::bad_request(
            Some(&format!("tokens[{i}]")),
            format!(
                "token {} is outside the vocabulary of {vocab} tokens",
                tokens[i]
            ),
        ));
    }
    let text = m.tokenizer.decode(&tokens, false);
    Ok(Json(DetokenizeResponse {
        prompt: text.clone(),
        content: text,
    }))
}
