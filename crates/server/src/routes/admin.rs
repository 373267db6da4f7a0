//! `/admin`: accounts, credits, keys and usage over HTTP, for operators' tooling. Behind
//! its own key (never an API key), and absent unless the operator configures one.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokenfab_platform::Platform;
use tokenfab_platform::keys;
use tokenfab_platform::money::Money;
use tokenfab_platform::store::{Account, KeyRecord, StoreError};
use tokenfab_wire::ErrorBody;
use tokenfab_wire::admin as wire;

use crate::error::HttpError;
use crate::routes::parse_json;
use crate::state::AppState;

/// Lets a request through only with the admin key.
pub async fn layer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(|s| keys::hash(s.trim()));
    match (&state.admin_key_hash, given) {
        (Some(want), Some(got)) if keys::same(want, &got) => next.run(req).await,
        _ => {
            metrics::counter!("tokenfab:refusals_total", "status" => "401", "reason" => "invalid_admin_key").increment(1);
            let mut e = HttpError::bad_request(None, "a valid admin key is required");
            e.status = StatusCode::UNAUTHORIZED;
            e.body.code = Some("invalid_admin_key".into());
            e.into_response()
        }
    }
}

fn platform(state: &AppState) -> Result<&Arc<Platform>, HttpError> {
    state
        .platform
        .as_ref()
        .ok_or_else(|| HttpError::internal("this server runs without a ledger"))
}

fn store_error(e: StoreError) -> HttpError {
    let mut h = match &e {
        StoreError::NoAccount(_) | StoreError::NoKey(_) => {
            let mut h = HttpError::bad_request(None, e.to_string());
            h.status = StatusCode::NOT_FOUND;
            h
        }
        StoreError::AccountExists(_) => {
            let mut h = HttpError::bad_request(Some("name"), e.to_string());
            h.status = StatusCode::CONFLICT;
            h
        }
        StoreError::AmbiguousKey(_) | StoreError::BadUrl(_) => {
            HttpError::bad_request(None, e.to_string())
        }
        _ => HttpError::internal(e.to_string()),
    };
    h.body.code.get_or_insert_with(|| "admin_error".into());
    h
}

pub fn account_json(a: &Account) -> wire::Account {
    wire::Account {
        id: a.id,
        name: a.name.clone(),
        tier: a.tier.clone(),
        balance: a.balance.to_string(),
        reserved: a.reserved.to_string(),
        available: a.available().to_string(),
        created_at: a.created_at,
    }
}

pub fn key_json(k: &KeyRecord) -> wire::ApiKey {
    wire::ApiKey {
        id: k.id,
        account: k.account.clone(),
        prefix: k.prefix.clone(),
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        revoked: k.revoked_at.is_some(),
        key: None,
    }
}

type Answer = Result<Response, HttpError>;

/// Every account with its balance.
#[utoipa::path(get, path = "/accounts", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, body = wire::AccountList), (status = "4XX", body = ErrorBody)))]
pub async fn list_accounts(State(state): State<Arc<AppState>>) -> Answer {
    let all = platform(&state)?
        .store
        .accounts()
        .await
        .map_err(store_error)?;
    let data = all.iter().map(account_json).collect();
    Ok(Json(wire::AccountList { data }).into_response())
}

/// Opens an account with a zero balance.
#[utoipa::path(post, path = "/accounts", tag = "admin", security(("admin_key" = [])),
    request_body = wire::NewAccount,
    responses((status = 201, body = wire::Account), (status = "4XX", body = ErrorBody)))]
pub async fn create_account(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let req: wire::NewAccount = parse_json(body, state.limits.max_body_bytes)?;
    if req.name.trim().is_empty() {
        return Err(HttpError::bad_request(
            Some("name"),
            "`name` must not be empty",
        ));
    }
    let tier = req.tier.as_deref().unwrap_or("default");
    let a = platform(&state)?
        .store
        .create_account(req.name.trim(), tier)
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(account_json(&a))).into_response())
}

/// One account by name.
#[utoipa::path(get, path = "/accounts/{name}", tag = "admin", security(("admin_key" = [])),
    params(("name" = String, Path, description = "The account's name")),
    responses((status = 200, body = wire::Account), (status = "4XX", body = ErrorBody)))]
pub async fn get_account(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Answer {
    let a = platform(&state)?
        .store
        .account(&name)
        .await
        .map_err(store_error)?;
    Ok(Json(account_json(&a)).into_response())
}

/// Adds credit to an account (a negative amount takes it back), recorded in the ledger.
#[utoipa::path(post, path = "/accounts/{name}/credit", tag = "admin", security(("admin_key" = [])),
    params(("name" = String, Path, description = "The account's name")),
    request_body = wire::Credit,
    responses((status = 200, body = wire::Account), (status = "4XX", body = ErrorBody)))]
pub async fn credit(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let req: wire::Credit = parse_json(body, state.limits.max_body_bytes)?;
    let amount: Money = req
        .amount
        .parse()
        .map_err(|e: tokenfab_platform::money::BadAmount| {
            HttpError::bad_request(Some("amount"), e.to_string())
        })?;
    let a = platform(&state)?
        .store
        .credit(&name, amount, req.note.as_deref().unwrap_or("admin API"))
        .await
        .map_err(store_error)?;
    Ok(Json(account_json(&a)).into_response())
}

/// Every key, revoked ones too; secrets are never shown again.
#[utoipa::path(get, path = "/keys", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, body = wire::KeyList), (status = "4XX", body = ErrorBody)))]
pub async fn list_keys(State(state): State<Arc<AppState>>) -> Answer {
    let all = platform(&state)?.store.keys().await.map_err(store_error)?;
    let data = all.iter().map(key_json).collect();
    Ok(Json(wire::KeyList { data }).into_response())
}

/// Creates a key for an account; the answer carries its secret, once.
#[utoipa::path(post, path = "/keys", tag = "admin", security(("admin_key" = [])),
    request_body = wire::NewKey,
    responses((status = 201, body = wire::ApiKey), (status = "4XX", body = ErrorBody)))]
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let req: wire::NewKey = parse_json(body, state.limits.max_body_bytes)?;
    let p = platform(&state)?;
    let (secret, rec) = p
        .store
        .create_key(&req.account)
        .await
        .map_err(store_error)?;
    p.forget_keys();
    let mut key = key_json(&rec);
    key.key = Some(secret);
    Ok((StatusCode::CREATED, Json(key)).into_response())
}

/// Revokes a key at once (by id or prefix).
#[utoipa::path(delete, path = "/keys/{which}", tag = "admin", security(("admin_key" = [])),
    params(("which" = String, Path, description = "The key's id or prefix")),
    responses((status = 200, body = wire::ApiKey), (status = "4XX", body = ErrorBody)))]
pub async fn revoke_key(State(state): State<Arc<AppState>>, Path(which): Path<String>) -> Answer {
    let p = platform(&state)?;
    let rec = p.store.revoke_key(&which).await.map_err(store_error)?;
    p.forget_keys();
    Ok(Json(key_json(&rec)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Period {
    /// First UTC day, `YYYY-MM-DD` (default: today).
    from: Option<String>,
    /// Last UTC day, inclusive (default: `from`).
    to: Option<String>,
}

/// Tokens, requests and cost per account and model over a period of UTC days.
#[utoipa::path(get, path = "/usage", tag = "admin", security(("admin_key" = [])),
    params(Period),
    responses((status = 200, body = wire::UsageReport), (status = "4XX", body = ErrorBody)))]
pub async fn usage(State(state): State<Arc<AppState>>, Query(q): Query<Period>) -> Answer {
    let today = tokenfab_platform::store::unix_now().div_euclid(86_400);
    let day = |s: &Option<String>, param: &str, default: i64| match s {
        Some(s) => tokenfab_platform::days::parse(s).ok_or_else(|| {
            HttpError::bad_request(Some(param), format!("`{s}` is not a date: use YYYY-MM-DD"))
        }),
        None => Ok(default),
    };
    let from = day(&q.from, "from", today)?;
    let to = day(&q.to, "to", from)?;
    let rows = platform(&state)?
        .store
        .usage(from, to)
        .await
        .map_err(store_error)?;
    let data = rows
        .iter()
        .map(|u| wire::UsageRow {
            account: u.account.clone(),
            model: u.model.clone(),
            requests: u.requests,
            prompt_tokens: u.prompt_tokens,
            cached_tokens: u.cached_tokens,
            reasoning_tokens: u.reasoning_tokens,
            completion_tokens: u.completion_tokens,
            cost: u.cost.to_string(),
        })
        .collect();
    Ok(Json(wire::UsageReport {
        from: tokenfab_platform::days::format(from),
        to: tokenfab_platform::days::format(to),
        data,
    })
    .into_response())
}
