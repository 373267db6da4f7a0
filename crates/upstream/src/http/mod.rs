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
//! idle is noticed before reuse, or by a failure before any byte of the answer, and the
//! request then goes out once more on a fresh connection. Dropping a [`Body`] before its
//! end closes its connection, which is how a client's hang-up reaches the upstream.
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
#[cfg(feature = "tls")]
mod tls;

use std::io;
use std::time::Duration;

pub use conn::Client;
pub use origin::Origin;
pub use response::{Body, Response};

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("connecting to {0} took longer than {1:?}")]
    ConnectTimeout(String, Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the server closed the connection before the answer ended")]
    Closed,
    #[error("invalid HTTP answer: {0}")]
    Protocol(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// Whether a status says the request succeeded (2xx).
pub fn success(status: u16) -> bool {
    (200..300).contains(&status)
}
