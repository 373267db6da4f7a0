//! `/admin`: accounts, credits, keys, usage, the prices and limits in force and the models
//! with their health, over HTTP, for operators' tooling and the web console. Behind its
//! own key (never an API key), and absent unless the operator configures one.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenfab_platform::limits::Rates;
use tokenfab_platform::money::Money;
use tokenfab_platform::store::{Account, KeyRecord, StoreError, UsageTotal};
use tokenfab_platform::{Platform, days, keys};

use crate::error::HttpError;
use crate::routes::models::{health_json, reasoning};
use crate::routes::{day, parse_json};
use crate::state::{AppState, Serve};

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
            let mut e = HttpError::bad_request(None, "a valid admin key is required");
            e.status = StatusCode::UNAUTHORIZED;
            e.body.code = Some("invalid_admin_key".into());
            e.into_response()
        }
    }
}

pub(crate) fn platform(state: &AppState) -> Result<&Arc<Platform>, HttpError> {
    state
        .platform
        .as_ref()
        .ok_or_else(|| HttpError::internal("this server runs without a ledger"))
}

pub(crate) fn store_error(e: StoreError) -> HttpError {
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

pub fn account_json(a: &Account) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "tier": a.tier,
        "balance": a.balance.to_string(),
        "reserved": a.reserved.to_string(),
        "available": a.available().to_string(),
        "created_at": a.created_at,
    })
}

pub fn key_json(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "account": k.account,
        "prefix": k.prefix,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "revoked": k.revoked_at.is_some(),
    })
}

type Answer = Result<Response, HttpError>;

pub async fn list_accounts(State(state): State<Arc<AppState>>) -> Answer {
    let all = platform(&state)?
        .store
        .accounts()
        .await
        .map_err(store_error)?;
    Ok(Json(json!({ "data": all.iter().map(account_json).collect::<Vec<_>>() })).into_response())
}

#[derive(Deserialize)]
pub struct NewAccount {
    name: String,
    tier: Option<String>,
}

pub async fn create_account(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let req: NewAccount = parse_json(body, state.limits.max_body_bytes)?;
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

pub async fn get_account(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Answer {
    let a = platform(&state)?
        .store
        .account(&name)
        .await
        .map_err(store_error)?;
    Ok(Json(account_json(&a)).into_response())
}

#[derive(Deserialize)]
pub struct Credit {
    /// A decimal string (`"10.00"`): JSON numbers are floats, money is not.
    amount: String,
    note: Option<String>,
}

pub async fn credit(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let req: Credit = parse_json(body, state.limits.max_body_bytes)?;
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

pub async fn list_keys(State(state): State<Arc<AppState>>) -> Answer {
    let all = platform(&state)?.store.keys().await.map_err(store_error)?;
    Ok(Json(json!({ "data": all.iter().map(key_json).collect::<Vec<_>>() })).into_response())
}

#[derive(Deserialize)]
pub struct NewKey {
    account: String,
}

pub async fn create_key(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let req: NewKey = parse_json(body, state.limits.max_body_bytes)?;
    let p = platform(&state)?;
    let (secret, rec) = p
        .store
        .create_key(&req.account)
        .await
        .map_err(store_error)?;
    p.forget_keys();
    let mut v = key_json(&rec);
    v["key"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub async fn revoke_key(State(state): State<Arc<AppState>>, Path(which): Path<String>) -> Answer {
    let p = platform(&state)?;
    let rec = p.store.revoke_key(&which).await.map_err(store_error)?;
    p.forget_keys();
    Ok(Json(key_json(&rec)).into_response())
}

#[derive(Deserialize)]
pub struct Period {
    /// First UTC day, `YYYY-MM-DD` (default: today).
    from: Option<String>,
    /// Last UTC day, inclusive (default: `from`).
    to: Option<String>,
}

/// A usage total's numbers, as every usage report shows them.
pub fn usage_json(u: &UsageTotal) -> Value {
    json!({
        "account": u.account,
        "model": u.model,
        "requests": u.requests,
        "prompt_tokens": u.prompt_tokens,
        "cached_tokens": u.cached_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "completion_tokens": u.completion_tokens,
        "cost": u.cost.to_string(),
    })
}

pub async fn usage(State(state): State<Arc<AppState>>, Query(q): Query<Period>) -> Answer {
    let today = tokenfab_platform::store::unix_now().div_euclid(86_400);
    let from = day(q.from.as_deref(), "from", today)?;
    let to = day(q.to.as_deref(), "to", from)?;
    let rows = platform(&state)?
        .store
        .usage(from, to)
        .await
        .map_err(store_error)?;
    let data: Vec<Value> = rows.iter().map(usage_json).collect();
    Ok(
        Json(json!({ "from": days::format(from), "to": days::format(to), "data": data }))
            .into_response(),
    )
}

fn rates_json(r: &Rates) -> Value {
    json!({ "rpm": r.rpm, "tpm": r.tpm, "rpd": r.rpd, "tpd": r.tpd })
}

/// The prices and limits in force now: every served model's price, and its limits for
/// every tier the configuration names (the tier's own limits overlaid with the model's,
/// as admission applies them; `null` is unlimited). An account of a tier not named here
/// gets the `default` tier's.
pub async fn terms(State(state): State<Arc<AppState>>) -> Answer {
    let p = platform(&state)?;
    let terms = p.terms();
    let mut tiers: BTreeSet<&str> = terms.tiers.keys().map(String::as_str).collect();
    tiers.extend(
        terms
            .models
            .values()
            .flat_map(|m| m.limits.keys().map(String::as_str)),
    );
    tiers.insert("default");
    let models: Vec<Value> = state
        .models()
        .iter()
        .map(|m| {
            let price = p.price(&m.id);
            let limits: serde_json::Map<String, Value> = tiers
                .iter()
                .map(|t| (t.to_string(), rates_json(&p.rates(t, &m.id))))
                .collect();
            json!({
                "id": m.id,
                "type": m.kind.as_str(),
                "input_per_million": price.input_per_million.to_string(),
                "output_per_million": price.output_per_million.to_string(),
                "cached_input_per_million": price.cached_input_per_million.map(|c| c.to_string()),
                "free": price.is_free(),
                "limits": limits,
            })
        })
        .collect();
    let tier_limits: serde_json::Map<String, Value> = tiers
        .iter()
        .map(|t| {
            let r = terms.tiers.get(*t).copied().unwrap_or_default();
            (t.to_string(), rates_json(&r))
        })
        .collect();
    Ok(Json(json!({ "tiers": tier_limits, "models": models })).into_response())
}

/// The served models with what runs them and how they are doing: `/health`'s facts plus
/// a local model's context window and thinking, an upstream model's every backend.
pub async fn models(State(state): State<Arc<AppState>>) -> Answer {
    let data: Vec<Value> = state
        .models()
        .iter()
        .map(|m| {
            let mut v = health_json(m);
            v["type"] = json!(m.kind.as_str());
            v["sub_type"] = json!(m.sub_type);
            v["reasoning"] = json!(reasoning(m));
            match &m.serve {
                Serve::Local(l) => {
                    v["serve"] = json!("local");
                    v["context_length"] = json!(l.engine.context_length());
                }
                Serve::Encoder(_) => v["serve"] = json!("encoder"),
                Serve::Upstream(u) => {
                    v["serve"] = json!("upstream");
                    v["context_length"] = json!(u.context_length);
                    v["pool"] = u
                        .pool
                        .backends
                        .iter()
                        .map(|b| {
                            json!({
                                "url": b.cfg.url,
                                "model": b.cfg.model,
                                "weight": b.cfg.weight,
                                "up": b.is_up(),
                                "failures": b.failures(),
                                "outstanding": b.outstanding(),
                            })
                        })
                        .collect();
                }
            }
            v
        })
        .collect();
    Ok(Json(json!({ "data": data })).into_response())
}
