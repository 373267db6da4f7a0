//! `GET /v1/user/info`: the caller's account and balances, in SiliconFlow's shape.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use tokenfab_platform::Caller;
use tokenfab_platform::money::Money;
use tokenfab_wire::ErrorBody;
use tokenfab_wire::admin::{UserData, UserInfo};

use crate::auth::refusal;
use crate::state::AppState;

/// The key's account and balances.
#[utoipa::path(get, path = "/user/info", tag = "account", security(("api_key" = [])),
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
