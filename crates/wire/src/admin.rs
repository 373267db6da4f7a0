//! `/admin`: the operator's accounts, credits, keys and usage; and `GET /v1/user/info`, a
//! key holder's own account in SiliconFlow's shape. Money is a decimal string
//! (`"12.345678"`): JSON numbers are floats, money is not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::models::{ModelHealth, ModelReasoning};

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

/// Totals of one account and model over a period (or one day of it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UsageRow {
    /// The UTC day, `YYYY-MM-DD`, in a report by day (`GET /v1/user/usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
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

/// `GET /v1/user/usage`: the caller's totals per UTC day and model, days without usage
/// left out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct UserUsage {
    /// `list`.
    pub object: String,
    pub from: String,
    pub to: String,
    pub data: Vec<UsageRow>,
}

/// One request as the ledger settled it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LedgerRequest {
    /// The request's id (its `x-request-id`).
    pub id: String,
    pub model: String,
    /// The first characters of the key it came with; `null` for open access.
    pub key: Option<String>,
    /// Unix seconds.
    pub created: i64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost: String,
    /// How it ended: `done`, `length`, `client_gone` (a stream its client stopped),
    /// `error`, `interrupted`.
    pub status: String,
    /// Who counted the tokens: `engine`, `upstream` (its own count), `counted` (tokenfab
    /// counted an upstream's answer), `estimated`.
    pub source: String,
}

/// `GET /v1/user/requests`: the caller's latest requests, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RequestList {
    /// `list`.
    pub object: String,
    pub data: Vec<LedgerRequest>,
}

/// Rate limits; `null` is unlimited.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RateLimits {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Requests per day.
    pub rpd: Option<u64>,
    /// Tokens per day.
    pub tpd: Option<u64>,
}

/// One served model's price and its limits per tier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ModelTerms {
    pub id: String,
    /// `chat`, `embedding` or `reranker`.
    #[serde(rename = "type")]
    pub kind: String,
    pub input_per_million: String,
    pub output_per_million: String,
    pub cached_input_per_million: Option<String>,
    pub free: bool,
    /// By tier: the tier's limits overlaid with the model's, as admission applies them.
    pub limits: BTreeMap<String, RateLimits>,
}

/// `GET /admin/terms`: the prices and limits in force now. An account of a tier not named
/// here gets the `default` tier's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TermsReport {
    pub tiers: BTreeMap<String, RateLimits>,
    pub models: Vec<ModelTerms>,
}

/// One upstream backend's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct BackendState {
    pub url: String,
    /// The upstream's name for the model.
    pub model: String,
    pub weight: u32,
    /// False while taken out after failures.
    pub up: bool,
    /// Consecutive failures.
    pub failures: u32,
    /// Requests in flight on it.
    pub outstanding: usize,
}

/// One served model, what runs it and how it is doing: `/health`'s facts and more.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AdminModel {
    #[serde(flatten)]
    pub health: ModelHealth,
    /// `chat`, `embedding` or `reranker`.
    #[serde(rename = "type")]
    pub kind: String,
    pub sub_type: String,
    pub reasoning: Option<ModelReasoning>,
    /// `local`, `encoder` or `upstream`.
    pub serve: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// An upstream model's backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Vec<BackendState>>,
}

/// `GET /admin/models`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AdminModelList {
    pub data: Vec<AdminModel>,
}
