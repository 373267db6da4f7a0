//! The OpenAI error shape: `{"error": {"message", "type", "param", "code"}}`.

use serde::{Deserialize, Serialize};

/// The body of every error response. Clients (the `openai` package among them) parse this
/// exact shape to raise typed exceptions, so it never varies by route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

/// What went wrong, which request field caused it (`param`), and a stable machine code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ApiError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
