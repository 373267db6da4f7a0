//! `/v1/user`: what a key holder may read of their own account: `info`, the account and
//! balances in SiliconFlow's shape; `usage`, tokens and cost per day and model; `requests`,
//! the latest rows of the ledger. Every query is the caller's account's, never another's.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokenfab_platform::money::Money;
use tokenfab_platform::{Caller, days};
use tokenfab_wire::ErrorBody;
use tokenfab_wire::admin::{LedgerRequest, RequestList, UserData, UserInfo, UserUsage};

use crate::auth::refusal;
use crate::error::HttpError;
use crate::routes::admin::{platform, store_error, usage_row};
use crate::routes::day;
use crate::state::AppState;

/// The longest period one usage report covers: a year of days by models stays small.
const MAX_DAYS: i64 = 366;
/// Days a usage report covers when the query names no start.
const DEFAULT_DAYS: i64 = 30;
/// Most ledger rows one answer lists.
const MAX_ROWS: u32 = 100;

/// The key's account and balances.
#[utoipa::path(get, path = "/user/info", operation_id = "user_info", tag = "account", security(("api_key" = [])),
    responses((status = 200, body = UserInfo), (status = "4XX", body = ErrorBody)))]
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
    Json(UserInfo {
        code: 20000,
        message: "OK".into(),
        status: true,
        data: UserData {
            id,
            name,
            image: String::new(),
            email: String::new(),
            is_admin: false,
            balance: balance.to_string(),
            status: "normal".into(),
            introduction: String::new(),
            role: tier,
            charge_balance: balance.to_string(),
            total_balance: balance.to_string(),
            reserved_balance: reserved.to_string(),
            available_balance: Money(balance.0 - reserved.0).to_string(),
        },
    })
    .into_response()
}

/// A query string that does not parse, in the OpenAI shape rather than axum's plain text.
fn bad_query(e: QueryRejection) -> HttpError {
    HttpError::bad_request(None, format!("invalid query string: {}", e.body_text()))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsagePeriod {
    /// First UTC day, `YYYY-MM-DD` (default: 30 days ending with `to`).
    from: Option<String>,
    /// Last UTC day, inclusive (default: today).
    to: Option<String>,
}

/// The caller's requests, tokens and cost per UTC day and model, days without usage left
/// out (at most 366 days).
#[utoipa::path(get, path = "/user/usage", operation_id = "user_usage", tag = "account", security(("api_key" = [])),
    params(UsagePeriod),
    responses((status = 200, body = UserUsage), (status = "4XX", body = ErrorBody)))]
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
    let data = rows
        .iter()
        .map(|d| usage_row(&d.total, Some(d.day)))
        .collect();
    Ok(Json(UserUsage {
        object: "list".into(),
        from: days::format(from),
        to: days::format(to),
        data,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Latest {
    /// Rows to list, 1 to 100 (default 20).
    limit: Option<u32>,
}

/// The caller's latest requests as the ledger settled them, newest first: tokens, cost
/// and how each ended.
#[utoipa::path(get, path = "/user/requests", operation_id = "user_requests", tag = "account", security(("api_key" = [])),
    params(Latest),
    responses((status = 200, body = RequestList), (status = "4XX", body = ErrorBody)))]
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
    let data = rows
        .iter()
        .map(|r| LedgerRequest {
            id: r.request_id.clone(),
            model: r.model.clone(),
            key: r.key_prefix.clone(),
            created: r.created_at,
            prompt_tokens: r.tokens.prompt,
            cached_tokens: r.tokens.cached,
            reasoning_tokens: r.tokens.reasoning,
            completion_tokens: r.tokens.completion,
            total_tokens: r.tokens.prompt + r.tokens.completion,
            cost: r.cost.to_string(),
            status: r.status.clone(),
            source: r.source.clone(),
        })
        .collect();
    Ok(Json(RequestList {
        object: "list".into(),
        data,
    })
    .into_response())
}
