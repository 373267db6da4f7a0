//! Every failure a client can see, as an OpenAI-shaped error with the right status.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokenfab_wire::{ApiError, ErrorBody};

/// An error on its way to the client. Constructors name the HTTP meaning so handlers read
/// as the contract does (`bad_request("temperature", ...)`).
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub body: ApiError,
    pub retry_after: Option<u64>,
}

impl HttpError {
    fn new(
        status: StatusCode,
        kind: &str,
        code: Option<&str>,
        param: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        HttpError {
            status,
            body: ApiError {
                message: message.into(),
                kind: kind.into(),
                param: param.map(str::to_owned),
                code: code.map(str::to_owned),
            },
            retry_after: None,
        }
    }

    /// 400 naming the offending request field.
    pub fn bad_request(param: Option<&str>, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_request"),
            param,
            message,
        )
    }

    /// 400 for a prompt that does not fit the context window (OpenAI's code for it).
    pub fn context_exceeded(param: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("context_length_exceeded"),
            Some(param),
            message,
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
            format!("The model `{model}` does not exist; GET /v1/models lists the served models"),
        )
    }

    /// 404 for a file or batch that does not exist, or is another account's (which is
    /// answered the same, so ids cannot be probed).
    pub fn object_not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("not_found"),
            None,
            format!("No {what} with id `{id}` exists"),
        )
    }

    pub fn route_not_found(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("unknown_url"),
            None,
            format!("Unknown request URL: {method} {path}"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            Some("method_not_allowed"),
            None,
            format!("Method {method} is not allowed for {path}"),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            Some("request_too_large"),
            None,
            format!("The request body is larger than the server's limit of {limit} bytes"),
        )
    }

    /// 408: the request body stopped arriving.
    pub fn body_timeout(secs: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            Some("request_timeout"),
            None,
            format!("The request body stopped arriving: nothing came for {secs} s"),
        )
    }

    /// 503 with `retry-after`: the server holds as many connections as it may.
    pub fn too_many_connections(max: usize) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("too_many_connections"),
            None,
            format!(
                "The server holds its limit of {max} connections; retry shortly, \
                 or reuse one connection for several requests"
            ),
        );
        e.retry_after = Some(1);
        e
    }

    /// 503 with `retry-after`: the server is shutting down and takes no new request
    /// ([`crate::drain`]).
    pub fn shutting_down() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("shutting_down"),
            None,
            "The server is shutting down and takes no new requests; retry shortly \
             (another replica, or this one once restarted, will answer)",
        );
        e.retry_after = Some(1);
        e
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("overloaded"),
            None,
            message,
        );
        e.retry_after = Some(1);
        e
    }

    /// 502: an upstream server failed or answered what it should not have.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("upstream_error"),
            None,
            message,
        )
    }

    /// 503 with `retry-after`: no upstream backend can take the request now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("upstream_unavailable"),
            None,
            message,
        );
        e.retry_after = Some(1);
        e
    }

    /// 504: an upstream server did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            Some("upstream_timeout"),
            None,
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            Some("internal_error"),
            None,
            message,
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody { error: self.body }).unwrap_or_default();
        let mut resp = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
