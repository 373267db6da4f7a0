//! `/admin`: accounts, credits, keys, usage, the prices and limits in force and the models
//! with their health, over HTTP, for operators' tooling and the web console. Behind its
//! own key (never an API key), and absent unless the operator configures one.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokenfab_platform::limits::Rates;
use tokenfab_platform::money::Money;
use tokenfab_platform::store::{Account, KeyRecord, StoreError, UsageTotal};
use tokenfab_platform::{Platform, days, keys};
use tokenfab_wire::ErrorBody;
use tokenfab_wire::admin as wire;

use crate::error::HttpError;
use crate::routes::models::{model_health, reasoning};
use crate::routes::{day, parse_json};
use crate::state::{AppState, Serve};

/// Lets a request through only with the admin key; a client address that sent too many
/// wrong keys lately is refused with 429 before its key is looked at ([`crate::guard`]).
pub async fn layer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let now = Instant::now();
    if let Some(wait) = state.admin_guard.locked(addr, now) {
        metrics::counter!("tokenfab:refusals_total", "status" => "429", "reason" => "admin_key_guesses").increment(1);
        let mut e = HttpError::bad_request(
            None,
            format!("too many wrong admin keys from this address: retry in {wait} s"),
        );
        e.status = StatusCode::TOO_MANY_REQUESTS;
        e.body.code = Some("too_many_admin_failures".into());
        e.retry_after = Some(wait);
        return e.into_response();
    }
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
            state.admin_guard.failed(addr, now);
            metrics::counter!("tokenfab:refusals_total", "status" => "401", "reason" => "invalid_admin_key").increment(1);
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

/// A usage total's numbers, as every usage report shows them (`day` for a report by day).
pub fn usage_row(u: &UsageTotal, day: Option<i64>) -> wire::UsageRow {
    wire::UsageRow {
        day: day.map(days::format),
        account: u.account.clone(),
        model: u.model.clone(),
        requests: u.requests,
        prompt_tokens: u.prompt_tokens,
        cached_tokens: u.cached_tokens,
        reasoning_tokens: u.reasoning_tokens,
        completion_tokens: u.completion_tokens,
        cost: u.cost.to_string(),
    }
}

/// Tokens, requests and cost per account and model over a period of UTC days.
#[utoipa::path(get, path = "/usage", operation_id = "admin_usage", tag = "admin", security(("admin_key" = [])),
    params(Period),
    responses((status = 200, body = wire::UsageReport), (status = "4XX", body = ErrorBody)))]
pub async fn usage(State(state): State<Arc<AppState>>, Query(q): Query<Period>) -> Answer {
    let today = tokenfab_platform::store::unix_now().div_euclid(86_400);
    let from = day(q.from.as_deref(), "from", today)?;
    let to = day(q.to.as_deref(), "to", from)?;
    let rows = platform(&state)?
        .store
        .usage(from, to)
        .await
        .map_err(store_error)?;
    let data = rows.iter().map(|u| usage_row(u, None)).collect();
    Ok(Json(wire::UsageReport {
        from: days::format(from),
        to: days::format(to),
        data,
    })
    .into_response())
}

fn rate_limits(r: &Rates) -> wire::RateLimits {
    wire::RateLimits {
        rpm: r.rpm,
        tpm: r.tpm,
        rpd: r.rpd,
        tpd: r.tpd,
    }
}

/// The prices and limits in force now: every served model's price, and its limits for
/// every tier the configuration names (the tier's own limits overlaid with the model's,
/// as admission applies them; `null` is unlimited). An account of a tier not named here
/// gets the `default` tier's.
#[utoipa::path(get, path = "/terms", operation_id = "admin_terms", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, body = wire::TermsReport), (status = "4XX", body = ErrorBody)))]
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
    let models = state
        .models()
        .iter()
        .map(|m| {
            let price = p.price(&m.id);
            wire::ModelTerms {
                id: m.id.clone(),
                kind: m.kind.as_str().into(),
                input_per_million: price.input_per_million.to_string(),
                output_per_million: price.output_per_million.to_string(),
                cached_input_per_million: price.cached_input_per_million.map(|c| c.to_string()),
                free: price.is_free(),
                limits: tiers
                    .iter()
                    .map(|t| (t.to_string(), rate_limits(&p.rates(t, &m.id))))
                    .collect(),
            }
        })
        .collect();
    let tier_limits = tiers
        .iter()
        .map(|t| {
            let r = terms.tiers.get(*t).copied().unwrap_or_default();
            (t.to_string(), rate_limits(&r))
        })
        .collect();
    Ok(Json(wire::TermsReport {
        tiers: tier_limits,
        models,
    })
    .into_response())
}

/// The served models with what runs them and how they are doing: `/health`'s facts plus
/// a local model's context window and thinking, an upstream model's every backend.
#[utoipa::path(get, path = "/models", operation_id = "admin_models", tag = "admin", security(("admin_key" = [])),
    responses((status = 200, body = wire::AdminModelList), (status = "4XX", body = ErrorBody)))]
pub async fn models(State(state): State<Arc<AppState>>) -> Answer {
    let data = state
        .models()
        .iter()
        .map(|m| {
            let (serve, context_length, pool) = match &m.serve {
                Serve::Local(l) => ("local", Some(l.engine.context_length()), None),
                Serve::Encoder(_) => ("encoder", None, None),
                Serve::Upstream(u) => {
                    let pool = u
                        .pool
                        .backends
                        .iter()
                        .map(|b| wire::BackendState {
                            url: b.cfg.url.clone(),
                            model: b.cfg.model.clone(),
                            weight: b.cfg.weight,
                            up: b.is_up(),
                            failures: b.failures(),
                            outstanding: b.outstanding(),
                        })
                        .collect();
                    ("upstream", Some(u.context_length), Some(pool))
                }
            };
            wire::AdminModel {
                health: model_health(m),
                kind: m.kind.as_str().into(),
                sub_type: m.sub_type.clone(),
                reasoning: reasoning(m),
                serve: serve.into(),
                context_length,
                pool,
            }
        })
        .collect();
    Ok(Json(wire::AdminModelList { data }).into_response())
}
