//! `/admin`: the operator's accounts, credits, keys and usage; and `GET /v1/user/info`, a
//! key holder's own account in SiliconFlow's shape. Money is a decimal string
//! (`"12.345678"`): JSON numbers are floats, money is not.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One account and its money.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Account {
    pub id: i64,
    pub name: String,
    /// The rate-limit tier.
    pub tier: String,
    pub balance: String,
    /// Held by requests that are running.
    pub reserved: String,
    /// `balance` less `reserved`: what new requests may spend.
    pub available: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// `POST /admin/accounts`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewAccount {
    pub name: String,
    /// The rate-limit tier (default `default`).
    pub tier: Option<String>,
}

/// `POST /admin/accounts/{name}/credit`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct Credit {
    /// A decimal string (`"10.00"`); negative takes credit back.
    pub amount: String,
    /// Kept in the ledger beside the credit.
    pub note: Option<String>,
}

/// One API key; its secret is shown once, in the answer that creates it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ApiKey {
    pub id: i64,
    /// The account's name.
    pub account: String,
    /// The secret's first characters, to tell keys apart.
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked: bool,
    /// The whole secret (`sk-…`), only when the key was just created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `POST /admin/keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct NewKey {
    /// The account the key spends from.
    pub account: String,
}

/// A list answer: `{"data": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AccountList {
    pub data: Vec<Account>,
}

/// A list answer: `{"data": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct KeyList {
    pub data: Vec<ApiKey>,
}

/// Totals of one account and model over a period.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UsageRow {
    pub account: String,
    pub model: String,
    pub requests: i64,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub completion_tokens: i64,
    pub cost: String,
}

/// `GET /admin/usage`: the period's totals per account and model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UsageReport {
    /// First UTC day, `YYYY-MM-DD`.
    pub from: String,
    /// Last UTC day, inclusive.
    pub to: String,
    pub data: Vec<UsageRow>,
}

/// `GET /v1/user/info`, SiliconFlow's envelope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UserInfo {
    /// 20000 for success.
    pub code: i64,
    pub message: String,
    pub status: bool,
    pub data: UserData,
}

/// The key's account. SiliconFlow reports a gift `balance`, a topped-up `chargeBalance`
/// and their sum; tokenfab has one balance, so all three carry it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserData {
    pub id: String,
    pub name: String,
    pub image: String,
    pub email: String,
    pub is_admin: bool,
    pub balance: String,
    pub status: String,
    pub introduction: String,
    /// The rate-limit tier.
    pub role: String,
    pub charge_balance: String,
    pub total_balance: String,
    /// Held by running requests (tokenfab's addition).
    pub reserved_balance: String,
    /// What new requests may spend (tokenfab's addition).
    pub available_balance: String,
}
