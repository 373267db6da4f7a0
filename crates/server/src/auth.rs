//! Who is calling: the `Authorization` header turned into a [`Caller`] before any `/v1`
//! handler runs, and the platform's refusals (401, 402, 429, 503) and rate-limit headers
//! in the contract's shape.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokenfab_platform::limits::Standing;
use tokenfab_platform::{Caller, Refusal};
use tokenfab_wire::ApiError;

use crate::error::HttpError;
use crate::state::AppState;

/// Authenticates every `/v1` request; handlers find the [`Caller`] in the extensions.
pub async fn layer(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let caller = match &state.platform {
        None => Caller::Open,
        Some(p) => {
            let h = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match p.authenticate(h).await {
                Ok(c) => c,
                Err(e) => return refusal(e).into_response(),
            }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn error(status: StatusCode, kind: &str, code: &str, message: String) -> HttpError {
    HttpError {
        status,
        body: ApiError {
            message,
            kind: kind.into(),
            param: None,
            code: Some(code.into()),
        },
        retry_after: None,
    }
}

/// The `reason` label of `tokenfab:refusals_total`.
fn reason(r: &Refusal) -> &'static str {
    match r {
        Refusal::MissingKey => "missing_key",
        Refusal::InvalidKey => "invalid_key",
        Refusal::RevokedKey => "revoked_key",
        Refusal::InsufficientQuota { .. } => "insufficient_quota",
        Refusal::RateLimited { limit, .. } if limit.starts_with('T') => "rate_limited_tokens",
        Refusal::RateLimited { .. } => "rate_limited_requests",
        Refusal::Store(_) => "ledger_unavailable",
        Refusal::Limits(_) => "limits_unavailable",
    }
}

/// A refusal as the client sees it, with the rate-limit headers where it has them; counted
/// in `tokenfab:refusals_total` by status and reason.
pub fn refusal(r: Refusal) -> Response {
    let reason = reason(&r);
    let resp = respond(r);
    metrics::counter!("tokenfab:refusals_total", "status" => resp.status().as_u16().to_string(), "reason" => reason).increment(1);
    resp
}

fn respond(r: Refusal) -> Response {
    let message = r.to_string();
    match r {
        Refusal::MissingKey | Refusal::InvalidKey | Refusal::RevokedKey => error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            message,
        )
        .into_response(),
        Refusal::InsufficientQuota { .. } => error(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            "insufficient_quota",
            message,
        )
        .into_response(),
        Refusal::RateLimited {
            limit,
            retry_after,
            decision,
            ..
        } => {
            let kind = if limit.starts_with('T') {
                "tokens"
            } else {
                "requests"
            };
            let mut e = error(
                StatusCode::TOO_MANY_REQUESTS,
                kind,
                "rate_limit_exceeded",
                message,
            );
            e.retry_after = Some(retry_after);
            let mut resp = e.into_response();
            rate_headers(resp.headers_mut(), decision.requests, decision.tokens);
            resp
        }
        Refusal::Store(e) => {
            tracing::error!(%e, "the ledger is unavailable");
            let mut e = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "ledger_unavailable",
                "the accounts database is unavailable; retry shortly".into(),
            );
            e.retry_after = Some(1);
            e.into_response()
        }
        Refusal::Limits(e) => {
            tracing::error!(%e, "the rate-limit store is unavailable");
            let mut e = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "limits_unavailable",
                "the rate-limit store is unavailable; retry shortly".into(),
            );
            e.retry_after = Some(1);
            e.into_response()
        }
    }
}

/// `x-ratelimit-*` headers, as OpenAI sends them: limits, what remains, and when the
/// window resets (`"12s"`).
pub fn rate_headers(h: &mut HeaderMap, requests: Option<Standing>, tokens: Option<Standing>) {
    for (what, s) in [("requests", requests), ("tokens", tokens)] {
        let Some(s) = s else { continue };
        let pairs = [
            (format!("x-ratelimit-limit-{what}"), s.limit.to_string()),
            (
                format!("x-ratelimit-remaining-{what}"),
                s.remaining.to_string(),
            ),
            (
                format!("x-ratelimit-reset-{what}"),
                format!("{}s", s.reset_secs),
            ),
        ];
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                axum::http::HeaderName::try_from(k),
                HeaderValue::try_from(v),
            ) {
                h.insert(k, v);
            }
        }
    }
}
