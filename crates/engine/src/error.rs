//! The engine's error type: what can go wrong loading a model or serving a request, in
//! words a user can act on. The server maps each variant to an HTTP status.

/// Errors raised by the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file is unusable: not GGUF, truncated, unsupported architecture or type.
    #[error("{0}")]
    BadModel(String),
    /// The request cannot be served as asked (too long for the context, bad template input).
    #[error("{0}")]
    BadRequest(String),
    /// The chat template failed to render or is missing.
    #[error("{0}")]
    Template(String),
    /// The engine thread has stopped; the server should report 503.
    #[error("the inference engine is not running")]
    Stopped,
}
