//! `GET /v1/user/info`: the caller's account and balances, in SiliconFlow's shape.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokenfab_platform::Caller;
use tokenfab_platform::money::Money;

use crate::auth::refusal;
use crate::state::AppState;

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
