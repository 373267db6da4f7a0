//! Scripted loopback servers for the tests of the client and of the retries above it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Client, Origin};

pub const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A deadline no loopback answer should come near.
pub fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// Three posts in a row, each answered `ok`.
pub async fn three_oks(client: &Client) {
    for _ in 0..3 {
        let r = client
            .post("chat/completions", b"{}", soon())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.bytes(100).await.unwrap(), "ok");
    }
}

/// What a loopback server saw.
#[derive(Default)]
pub struct Seen {
    conns: AtomicUsize,
    requests: AtomicUsize,
}

impl Seen {
    pub fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Requests read whole, on every connection.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Answers each request on `s` with the next of `answers` and returns after the last
/// (dropping `s` then closes the connection). An empty answer reads its request and
/// answers nothing.
pub async fn answer<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, answers: &[&str], seen: &Seen) {
    let mut buf = Vec::new();
    for a in answers {
        // Read one request: its head and content-length body.
        loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(h) = text.find("\r\n\r\n") {
                let len = text[..h]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.parse().unwrap());
                if buf.len() >= h + 4 + len {
                    buf.drain(..h + 4 + len);
                    break;
                }
            }
        }
        seen.requests.fetch_add(1, Ordering::SeqCst);
        if s.write_all(a.as_bytes()).await.is_err() || s.flush().await.is_err() {
            return;
        }
    }
}

/// A loopback server handing each connection to `handle`. Returns its port.
pub async fn serve<F, Fut>(handle: F) -> (u16, Arc<Seen>)
where
    F: Fn(TcpStream, Arc<Seen>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let count = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            count.conns.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(s, count.clone()));
        }
    });
    (port, seen)
}

/// A server that answers each request on a connection with the next of `answers`,
/// closing after the last one, and a client of it.
pub async fn server(answers: Vec<&'static str>) -> (Client, Arc<Seen>) {
    let (port, seen) = serve(move |mut s, seen| {
        let answers = answers.clone();
        async move { answer(&mut s, &answers, &seen).await }
    })
    .await;
    (client(port), seen)
}

/// A client of the loopback server on `port`.
pub fn client(port: u16) -> Client {
    let origin = Origin::parse(&format!("http://127.0.0.1:{port}/v1")).unwrap();
    Client::new(origin, Some("sk-x"), Duration::from_secs(1), None).unwrap()
}
