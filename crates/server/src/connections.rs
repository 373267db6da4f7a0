//! The accept loop: every TCP connection, from accept to close, and the limits that keep
//! clients from holding connections they do not use.
//!
//! `axum::serve` sets none of these, so a client could hold a connection forever by
//! sending half a request head. Here each connection is served by hyper's HTTP/1
//! connection directly, with:
//! - a cap on open connections ([`Limits::max_connections`]): past it, a connection is
//!   accepted and answered `503` with `retry-after` and `connection: close` in the OpenAI
//!   error shape, so a client learns at once what happened instead of waiting in the
//!   kernel's backlog for a timeout of its own;
//! - a bound on the request head's size (431 past it, from hyper);
//! - a [`Clock`] per connection: how long it may stay silent depends on where it is in
//!   its request cycle (reading a head, waiting between kept-alive requests, answering).
//!   hyper's own `header_read_timeout` cannot tell the wait for a kept-alive connection's
//!   next request from the reading of a head (its timer starts at both), so one setting
//!   would have to serve as both.
//!
//! The request body's read timeout is a router layer ([`crate::body_timeout`]), where the
//! 408 it answers is logged and counted like every response.
//!
//! On shutdown the listener is closed at once (a new connection is refused: nothing was
//! sent, so any client or load balancer may retry it elsewhere, as with nginx), and the
//! requests being answered are let finish for up to [`Limits::shutdown_grace`]; a request
//! that arrives meanwhile on a connection kept alive from before is answered 503 by
//! [`crate::drain`]. Once none is being answered, idle connections are closed; when the
//! grace runs out first, the connections still open are cut, which cancels their requests
//! as a client's hang-up does (billed for what was generated).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::HttpError;
use crate::state::Limits;

/// Connections being turned away at once: each lingers up to [`LINGER`] reading what the
/// client sent, and past this many a refusal is written without waiting, so a flood of
/// connections cannot pile up descriptors here.
const TURNING_AWAY: usize = 64;

/// How long a refused connection is read before it is closed: closing with the client's
/// request unread sends a reset, which can destroy the 503 before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Accepts connections until `shutdown` resolves, then lets the requests being answered
/// finish within [`Limits::shutdown_grace`] and closes every connection (see the module's
/// doc).
pub async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let turning_away = Arc::new(Semaphore::new(TURNING_AWAY));
    let refusal = Arc::new(refusal(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    // The connection's Clock replaces hyper's header timer (see the module's doc).
    http.header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let http = Arc::new(http);
    let graceful = GracefulShutdown::new();
    let open = metrics::gauge!("tokenfab:connections_open");
    let answering = watch::Sender::new(0usize);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            // Ended connections are reaped as they go, so the set holds the open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = &mut shutdown => break,
        };
        // Small writes (stream chunks, short answers) leave at once instead of waiting for
        // the client's acknowledgement of the previous one.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%e, "cannot set TCP_NODELAY");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            rejected("max_connections");
            let lingering = turning_away.clone().try_acquire_owned().ok();
            tokio::spawn(turn_away(tcp, refusal.clone(), lingering));
            continue;
        };
        open.increment(1.0);
        let conn = Connection {
            clock: Arc::new(Clock::new(limits)),
            answering: answering.clone(),
            _slot: slot,
        };
        let served = conn.serve(tcp, peer, router.clone(), http.clone(), graceful.watcher());
        connections.spawn(served);
    }
    drop(listener);
    let in_flight = *answering.borrow();
    tracing::info!(in_flight, grace = ?limits.shutdown_grace, "draining: no new connections; letting the requests in flight finish");
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        let _ = answering.subscribe().wait_for(|&n| n == 0).await;
        graceful.shutdown().await;
    })
    .await;
    if drained.is_err() {
        let cut = *answering.borrow();
        tracing::warn!(
            cut,
            "the shutdown grace is over: cutting the requests still in flight"
        );
    }
    connections.shutdown().await;
}

/// As `axum::serve` does: a connection that failed before it was accepted is the client's
/// business; anything else (out of descriptors, most often) is waited out, as retrying at
/// once would spin.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%e, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

fn rejected(reason: &'static str) {
    metrics::counter!("tokenfab:connections_rejected_total", "reason" => reason).increment(1);
}

/// The whole response a connection past the limit gets, written before any of its
/// request is read.
fn refusal(max: usize) -> Vec<u8> {
    let e = HttpError::too_many_connections(max);
    let body = serde_json::to_vec(&tokenfab_wire::ErrorBody { error: e.body }).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        e.retry_after.unwrap_or(1),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

async fn turn_away(
    mut tcp: TcpStream,
    refusal: Arc<Vec<u8>>,
    lingering: Option<OwnedSemaphorePermit>,
) {
    let Some(_lingering) = lingering else {
        let _ = tcp.try_write(&refusal);
        return;
    };
    let _ = tokio::time::timeout(LINGER, async {
        tcp.write_all(&refusal).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// One admitted connection; its slot under `max_connections` is freed when it drops.
struct Connection {
    clock: Arc<Clock>,
    /// How many requests of every connection are being answered, which a shutdown waits
    /// to fall to zero.
    answering: watch::Sender<usize>,
    _slot: OwnedSemaphorePermit,
}

/// Counts one request in [`Connection::answering`] from its arrival until its answer is
/// over or dropped (a handler cancelled by its client's hang-up included).
struct Answering(watch::Sender<usize>);

impl Answering {
    fn new(count: &watch::Sender<usize>) -> Answering {
        count.send_modify(|n| *n += 1);
        Answering(count.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Connection {
    async fn serve(
        self,
        tcp: TcpStream,
        peer: SocketAddr,
        router: Router,
        http: Arc<hyper::server::conn::http1::Builder>,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let clock = self.clock.clone();
        let answering = self.answering.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            clock.set(Phase::Answering);
            let busy = Answering::new(&answering);
            // Handlers see the client's address (the admin key's guessing guard counts by
            // it), as axum's `ConnectInfo`.
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let clock = clock.clone();
            // A Router is always ready (its `poll_ready` returns `Ready` at once).
            let answer = tower_service::Service::call(&mut router.clone(), req);
            async move {
                let resp = answer.await.unwrap_or_else(|e: Infallible| match e {});
                Ok::<_, Infallible>(resp.map(|body| Answer {
                    body,
                    end: Some((clock, busy)),
                }))
            }
        });
        let io = TokioIo::new(Heard {
            tcp,
            clock: self.clock.clone(),
        });
        let conn = watcher.watch(http.serve_connection(io, service));
        tokio::select! {
            done = conn => if let Err(e) = done {
                tracing::debug!(%e, "connection ended");
            },
            ended = self.clock.expired() => match ended {
                Phase::Head(_) => rejected("header_timeout"),
                _ => tracing::debug!("closing an idle kept-alive connection"),
            },
        }
        metrics::gauge!("tokenfab:connections_open").decrement(1.0);
    }
}

/// Where a connection is in its request cycle, which says how long it may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request's head is being read; the connection closes at this instant unless it is
    /// complete. A new connection starts here: a client connects to send a request.
    Head(Instant),
    /// A kept-alive connection waits for its next request until this instant.
    Waiting(Instant),
    /// A request is being answered: its body's read timeout and the client bound it.
    Answering,
}

/// A connection's [`Phase`], moved on by its reads ([`Heard`]), its requests (the
/// service) and the end of its answers ([`Answer`]); [`Clock::expired`] watches it.
struct Clock {
    phase: Mutex<Phase>,
    changed: Notify,
    header_read_timeout: Duration,
    keep_alive_idle: Duration,
}

impl Clock {
    fn new(limits: &Limits) -> Clock {
        Clock {
            phase: Mutex::new(Phase::Head(Instant::now() + limits.header_read_timeout)),
            changed: Notify::new(),
            header_read_timeout: limits.header_read_timeout,
            keep_alive_idle: limits.keep_alive_idle,
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: on a waiting connection, they begin the next request's head.
    fn heard(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        if let Phase::Waiting(_) = *phase {
            *phase = Phase::Head(Instant::now() + self.header_read_timeout);
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// An answer is complete: the connection waits for its next request.
    fn answered(&self) {
        self.set(Phase::Waiting(Instant::now() + self.keep_alive_idle));
    }

    /// Resolves with the phase whose deadline passed.
    async fn expired(&self) -> Phase {
        loop {
            // Taken before the phase is read, so that a change in between is not missed.
            let changed = self.changed.notified();
            let phase = self.phase();
            match phase {
                Phase::Answering => changed.await,
                Phase::Head(until) | Phase::Waiting(until) => tokio::select! {
                    _ = tokio::time::sleep_until(until) => if self.phase() == phase {
                        return phase;
                    },
                    _ = changed => {}
                },
            }
        }
    }
}

/// The connection's socket, telling its [`Clock`] when bytes arrive.
struct Heard {
    tcp: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.heard();
        }
        read
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A response body that tells the connection's [`Clock`] when the answer is over, and
/// ends its count among those being answered: at its end, or when hyper drops it unread
/// (a `HEAD`, a 204, a client gone).
struct Answer {
    body: axum::body::Body,
    end: Option<(Arc<Clock>, Answering)>,
}

impl Answer {
    fn over(&mut self) {
        if let Some((clock, _answering)) = self.end.take() {
            clock.answered();
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.over();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.over();
    }
}
