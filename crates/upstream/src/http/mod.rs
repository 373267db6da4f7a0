//! A lean HTTP/1.1 client for one upstream server: the hop every proxied request pays.
//!
//! General-purpose clients (reqwest over hyper) drive each connection from a task of its
//! own, so a request crosses tasks, and often threads, three times on its way (request
//! in, response head out, body out). Here the request's own task writes to the socket
//! and reads the answer: one write, usually one read, no hand-offs. `tokenfab bench
//! proxy` measures what that buys (the README has the figures).
//!
//! Scope, on purpose: `http://` (engines on the cluster's network) and, in builds with the
//! `tls` feature, `https://` (rustls, the webpki roots); `POST` and `GET`; answers framed
//! by `content-length`, `chunked` or the connection's end.
//! Connections are kept alive and reused last-in first-out; one the server closed while
//! idle is noticed before reuse, or by a write that fails before any byte of the request
//! left, and the request then goes out on a fresh connection. Once any of it was written,
//! a request is never sent again: without an answer it fails with an error that says the
//! server may have received it ([`Error::sent`]), as hyper's client does (it retries only
//! requests it had not begun to write). Dropping a [`Body`] before its end closes its
//! connection, which is how a client's hang-up reaches the upstream.
//!
//! # Layout
//! - `origin`: [`Origin`], a backend's base URL parsed once into what the client needs
//!   (scheme, `Host` header, address, base path), refusing what it cannot honour.
//! - `conn`: [`Client`], the pool of kept-alive connections to one server: checkout
//!   (skipping connections the server closed), checkin, connecting (with the TLS
//!   handshake), and the request loop that writes a request and reads its answer's head.
//! - `response`: an answer's framing: parsing its head, and [`Body`], which decodes
//!   `content-length`, `chunked` and close-delimited bodies and returns the connection to
//!   the pool at their end.
//! - `tls` (the `tls` feature): the rustls setup shared by every https backend.

mod conn;
mod origin;
mod response;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(feature = "tls")]
mod tls;

use std::io;
use std::time::Duration;

pub use conn::Client;
pub use origin::Origin;
pub(crate) use response::decode;
pub use response::{Body, Response};

/// What went wrong on the wire. [`Error::sent`] tells whether the server may have
/// received the request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("connecting to {0} took longer than {1:?}")]
    ConnectTimeout(String, Duration),
    /// A fresh connection failed before any byte of the request was written.
    #[error("the connection failed before the request was sent: {0}")]
    Unsent(io::Error),
    /// The request was written; the connection then ended or broke before any byte of an
    /// answer.
    #[error(
        "the server closed the connection without answering ({0}); it may have received the request"
    )]
    Unanswered(io::Error),
    /// The deadline passed: while connecting (`sent` false), or once some of the request
    /// was written.
    #[error("the server did not answer in time")]
    Timeout { sent: bool },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the server closed the connection before the answer ended")]
    Closed,
    #[error("invalid HTTP answer: {0}")]
    Protocol(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl Error {
    /// Whether the server may have received the request, and may be acting on it: true
    /// unless connecting failed, the request's first write did, or the deadline passed
    /// before it. Only a request that was not sent may go to another server.
    pub fn sent(&self) -> bool {
        match self {
            Error::Connect(..) | Error::ConnectTimeout(..) | Error::Unsent(_) => false,
            Error::Timeout { sent } => *sent,
            _ => true,
        }
    }
}

/// Whether a status says the request succeeded (2xx).
pub fn success(status: u16) -> bool {
    (200..300).contains(&status)
}
