//! `/v1/user`: what a key holder may read of their own account: `info`, the account and
//! balances in SiliconFlow's shape; `usage`, tokens and cost per day and model; `requests`,
//! the latest rows of the ledger. Every query is the caller's account's, never another's.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenfab_platform::money::Money;
use tokenfab_platform::{Caller, days};

use crate::auth::refusal;
use crate::error::HttpError;
use crate::routes::admin::{platform, store_error, usage_json};
use crate::routes::day;
use crate::state::AppState;

/// The longest period one usage report covers: a year of days by models stays small.
const MAX_DAYS: i64 = 366;
/// Days a usage report covers when the query names no start.
const DEFAULT_DAYS: i64 = 30;
/// Most ledger rows one answer lists.
const MAX_ROWS: u32 = 100;

pub async fn info(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let account = match &state.platform {
        Some(p) => match p.account(&caller).await {
            Ok(a) => a,
            Err(e) => return refusal(e.into()),
        },
        None => None,
    };
    // SiliconFlow reports a gift `balance`, a topped-up `chargeBalance` and their sum;
    // tokenfab has one balance, so all three carry it, with what running requests hold
    // and what is left to spend beside them.
    let (id, name, tier, balance, reserved) = match &account {
        Some(a) => (
            a.id.to_string(),
            a.name.clone(),
            a.tier.clone(),
            a.balance,
            a.reserved,
        ),
        None => (
            "open".into(),
            "open access".into(),
            "default".into(),
            Money(0),
            Money(0),
        ),
    };
    Json(json!({
        "code": 20000,
        "message": "OK",
        "status": true,
        "data": {
            "id": id,
            "name": name,
            "image": "",
            "email": "",
            "isAdmin": false,
            "balance": balance.to_string(),
            "status": "normal",
            "introduction": "",
            "role": tier,
            "chargeBalance": balance.to_string(),
            "totalBalance": balance.to_string(),
            "reservedBalance": reserved.to_string(),
            "availableBalance": Money(balance.0 - reserved.0).to_string(),
        }
    }))
    .into_response()
}

/// A query string that does not parse, in the OpenAI shape rather than axum's plain text.
fn bad_query(e: QueryRejection) -> HttpError {
    HttpError::bad_request(None, format!("invalid query string: {}", e.body_text()))
}

#[derive(Deserialize)]
pub struct UsagePeriod {
    /// First UTC day, `YYYY-MM-DD` (default: 30 days ending with `to`).
    from: Option<String>,
    /// Last UTC day, inclusive (default: today).
    to: Option<String>,
}

/// `GET /v1/user/usage?from=&to=`: the caller's requests, tokens and cost per UTC day and
/// model, days without usage left out.
pub async fn usage(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<UsagePeriod>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(q) = q.map_err(bad_query)?;
    let today = tokenfab_platform::store::unix_now().div_euclid(86_400);
    let to = day(q.to.as_deref(), "to", today)?;
    let from = day(q.from.as_deref(), "from", to - (DEFAULT_DAYS - 1))?;
    if from > to {
        return Err(HttpError::bad_request(Some("from"), "`from` is after `to`"));
    }
    if to - from >= MAX_DAYS {
        return Err(HttpError::bad_request(
            Some("from"),
            format!("a report covers at most {MAX_DAYS} days: narrow `from`..`to`"),
        ));
    }
    let rows = platform(&state)?
        .store
        .account_usage(caller.account_id(), from, to)
        .await
        .map_err(store_error)?;
    let data: Vec<Value> = rows
        .iter()
        .map(|d| {
            let mut v = usage_json(&d.total);
            v["day"] = json!(days::format(d.day));
            v
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "from": days::format(from),
        "to": days::format(to),
        "data": data,
    }))
    .into_response())
}

#[derive(Deserialize)]
pub struct Latest {
    /// Rows to list, 1 to 100 (default 20).
    limit: Option<u32>,
}

/// `GET /v1/user/requests?limit=`: the caller's latest requests as the ledger settled
/// them, newest first: tokens, cost and how each ended (`done`, `length`, `client_gone`
/// for a stream its client stopped, `error`, `interrupted`).
pub async fn requests(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<Latest>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(q) = q.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_ROWS).contains(&limit) {
        return Err(HttpError::bad_request(
            Some("limit"),
            format!("`limit` must be 1 to {MAX_ROWS}"),
        ));
    }
    let rows = platform(&state)?
        .store
        .recent_requests(caller.account_id(), limit)
        .await
        .map_err(store_error)?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.request_id,
                "model": r.model,
                "key": r.key_prefix,
                "created": r.created_at,
                "prompt_tokens": r.tokens.prompt,
                "cached_tokens": r.tokens.cached,
                "reasoning_tokens": r.tokens.reasoning,
                "completion_tokens": r.tokens.completion,
                "total_tokens": r.tokens.prompt + r.tokens.completion,
                "cost": r.cost.to_string(),
                "status": r.status,
                "source": r.source,
            })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })).into_response())
}
