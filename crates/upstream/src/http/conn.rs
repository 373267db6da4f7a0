//! The connections to one server and the request loop over them.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::response::{Head, Response, parse_head};
#[cfg(feature = "tls")]
use super::tls;
use super::{Error, Origin};

/// Idle connections kept per server; more are closed when their answers end.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused: just under the 5 s
/// keep-alive of uvicorn (vLLM, SGLang) and llama-server, so that a server closing an
/// idle connection as a request is written (a request that, once written, is never sent
/// again) stays rare.
const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

/// A connection, plain or TLS.
pub(super) enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether a write that failed proves that none of its bytes left. A socket's write
    /// takes all or nothing of what it reports; a TLS stream's may have sent records of
    /// the bytes before failing on a later one.
    fn failed_write_sends_nothing(&self) -> bool {
        match self {
            Stream::Plain(_) => true,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => false,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection and what was read from it beyond the last answer's head.
pub(super) struct Conn {
    pub(super) stream: Stream,
    pub(super) buf: BytesMut,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

struct Inner {
    origin: Origin,
    #[cfg(feature = "tls")]
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    /// `Authorization` header line, when the server wants a key.
    auth: Option<String>,
    idle: Mutex<Vec<Idle>>,
}

/// Requests to one server, over a pool of kept-alive connections. Cloning shares the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client for `origin`, sending `api_key` (if any) as a bearer token. An https
    /// origin's certificate is checked against the webpki roots, or against the PEM
    /// certificates in `ca_file` (a private CA) when one is given.
    pub fn new(
        origin: Origin,
        api_key: Option<&str>,
        connect_timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Client, String> {
        if let Some(k) = api_key
            && (k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err("an API key must be printable ASCII without spaces".into());
        }
        if ca_file.is_some() && !origin.tls {
            return Err("`ca_file` is for https:// backends".into());
        }
        Ok(Client {
            inner: Arc::new(Inner {
                #[cfg(feature = "tls")]
                tls: match ca_file {
                    Some(path) => tls::from_file(path)?,
                    None => tls::connector(),
                },
                origin,
                connect_timeout,
                auth: api_key.map(|k| format!("authorization: Bearer {k}\r\n")),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// `POST {base}/{path}` with a JSON body; the answer's head must come by `deadline`.
    pub async fn post(
        &self,
        path: &str,
        json: &[u8],
        deadline: Instant,
    ) -> Result<Response, Error> {
        self.request("POST", path, Some(json), deadline).await
    }

    /// `GET {base}/{path}`; the answer's head must come by `deadline`.
    pub async fn get(&self, path: &str, deadline: Instant) -> Result<Response, Error> {
        self.request("GET", path, None, deadline).await
    }

    /// Connecting (within the connect timeout too), writing and the answer's head, all by
    /// `deadline`. When it passes, [`Error::Timeout`] says whether any of the request was
    /// written by then.
    async fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&[u8]>,
        deadline: Instant,
    ) -> Result<Response, Error> {
        let msg = self.message(method, path, json);
        let mut sent = false;
        let send = self.send(&msg, &mut sent);
        match tokio::time::timeout_at(deadline.into(), send).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { sent }),
        }
    }

    /// Sends `msg` on the most recent idle connection, or on a new one, and reads the
    /// answer's head; `sent` turns true once any byte of `msg` was written.
    async fn send(&self, msg: &[u8], sent: &mut bool) -> Result<Response, Error> {
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            match exchange(&mut conn, msg, sent).await {
                Ok(head) => return Ok(Response::new(head, self.clone(), conn)),
                // Nothing of the request left: the server had closed the kept-alive
                // connection (its idle timeout, a restart), and the others are likely as
                // stale. Once any of it was written, a missing answer is the caller's: the
                // server may have received the request and be acting on it.
                Err(Error::Unsent(_)) if reused => self.lock().clear(),
                Err(e) => return Err(e),
            }
        }
    }

    /// The whole request, head and body, for one write.
    fn message(&self, method: &str, path: &str, json: Option<&[u8]>) -> Vec<u8> {
        let o = &self.inner.origin;
        let body = json.unwrap_or_default();
        let mut m = Vec::with_capacity(256 + body.len());
        m.extend_from_slice(method.as_bytes());
        m.push(b' ');
        m.extend_from_slice(o.base.as_bytes());
        m.push(b'/');
        m.extend_from_slice(path.trim_start_matches('/').as_bytes());
        m.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        m.extend_from_slice(o.authority.as_bytes());
        m.extend_from_slice(b"\r\nuser-agent: tokenfab/");
        m.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
        m.extend_from_slice(b"\r\n");
        if let Some(a) = &self.inner.auth {
            m.extend_from_slice(a.as_bytes());
        }
        if json.is_some() {
            m.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
            m.extend_from_slice(body.len().to_string().as_bytes());
            m.extend_from_slice(b"\r\n");
        }
        m.extend_from_slice(b"\r\n");
        m.extend_from_slice(body);
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(Idle { conn, since }) = idle.pop() {
            if since.elapsed() > MAX_IDLE_AGE {
                continue;
            }
            // Readable while idle means closed by the server (or unasked-for bytes, TLS
            // records included): either way not reusable. The readiness is the
            // runtime's, so an open connection costs no system call here.
            match conn.stream.tcp().try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(conn),
                _ => continue,
            }
        }
        None
    }

    pub(super) fn checkin(&self, conn: Conn) {
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A new connection, its TLS handshake included, within the connect timeout.
    async fn connect(&self) -> Result<Conn, Error> {
        let i = &self.inner;
        let o = &i.origin;
        let open = async {
            let tcp = TcpStream::connect((o.host.as_str(), o.port)).await?;
            tcp.set_nodelay(true)?;
            // Without the feature, parsing refused every https origin.
            #[cfg(feature = "tls")]
            if o.tls {
                let tls = tls::handshake(&i.tls, &o.host, tcp).await?;
                return Ok(Stream::Tls(Box::new(tls)));
            }
            Ok(Stream::Plain(tcp))
        };
        let stream = tokio::time::timeout(i.connect_timeout, open)
            .await
            .map_err(|_| Error::ConnectTimeout(o.authority.clone(), i.connect_timeout))?
            .map_err(|e| Error::Connect(o.authority.clone(), e))?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(8192),
        })
    }
}

/// Sends `msg` and reads the answer's head (skipping interim `1xx` heads).
async fn exchange(conn: &mut Conn, msg: &[u8], sent: &mut bool) -> Result<Head, Error> {
    conn.buf.clear();
    write(&mut conn.stream, msg, sent).await?;
    let mut got_any = false;
    loop {
        if !conn.buf.is_empty()
            && let Some(head) = parse_head(&mut conn.buf)?
        {
            return Ok(head);
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if !got_any => {
                return Err(Error::Unanswered(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(Error::Closed),
            Ok(_) => got_any = true,
            Err(e) if !got_any => return Err(Error::Unanswered(e)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes and flushes `msg`, setting `sent` once any of it was written. Fails with
/// [`Error::Unsent`] only when none of it can have left: then, and only then, may it go
/// out again.
async fn write(stream: &mut Stream, msg: &[u8], sent: &mut bool) -> Result<(), Error> {
    let mut rest = msg;
    while !rest.is_empty() {
        let failed = match stream.write(rest).await {
            Ok(0) => io::ErrorKind::WriteZero.into(),
            Ok(n) => {
                *sent = true;
                rest = &rest[n..];
                continue;
            }
            Err(e) => e,
        };
        let untouched = rest.len() == msg.len() && stream.failed_write_sends_nothing();
        return Err(if untouched {
            Error::Unsent(failed)
        } else {
            failed.into()
        });
    }
    // A TLS stream may hold the last record until flushed.
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::testing::{OK, answer, client, serve, server, soon, three_oks};

    #[tokio::test]
    async fn keeps_connections_alive() {
        let (client, seen) = server(vec![OK, OK, OK]).await;
        three_oks(&client).await;
        assert_eq!(seen.conns(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        // One answer per connection, then the server closes it.
        let (client, seen) = server(vec![OK]).await;
        for _ in 0..3 {
            let r = client
                .post("chat/completions", b"{}", soon())
                .await
                .unwrap();
            assert_eq!(r.body.bytes(100).await.unwrap(), "ok");
            // Let the close arrive (as a server's idle timeout would), or not.
            tokio::task::yield_now().await;
        }
        assert_eq!(seen.conns(), 3);
    }

    /// A request written on a kept-alive connection that then ends without an answer is
    /// not sent again: the server may have received it, and be acting on it.
    #[tokio::test]
    async fn a_request_the_server_may_have_received_is_not_sent_again() {
        // The first request is answered; the second is read whole, then the server closes.
        let (client, seen) = server(vec![OK, ""]).await;
        let r = client
            .post("chat/completions", b"{}", soon())
            .await
            .unwrap();
        assert_eq!(r.body.bytes(100).await.unwrap(), "ok");
        let e = match client.post("chat/completions", b"{}", soon()).await {
            Ok(r) => panic!("answered {} after the server closed", r.status),
            Err(e) => e,
        };
        assert!(e.sent(), "{e}");
        assert!(e.to_string().contains("may have received"), "{e}");
        assert_eq!(seen.requests(), 2, "{e}");
        assert_eq!(seen.conns(), 1);
    }

    /// The deadline covers connecting, writing and the answer's head; its error says
    /// whether the request had been written by then.
    #[tokio::test]
    async fn timeouts_say_whether_the_request_was_sent() {
        // Reads a request and never answers.
        let (port, seen) = serve(|mut s, seen| async move {
            answer(&mut s, &[""], &seen).await;
            std::future::pending::<()>().await;
        })
        .await;
        let by = Instant::now() + Duration::from_millis(200);
        let e = client(port).post("x", b"{}", by).await.err().unwrap();
        assert!(matches!(e, Error::Timeout { sent: true }), "{e:?}");
        assert!(e.sent());
        assert_eq!(seen.requests(), 1);

        // A server whose accept queue is full: the kernel drops the next connection's
        // handshake, so it never opens.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(0).unwrap();
        let port = full.local_addr().unwrap().port();
        let _queued = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let by = Instant::now() + Duration::from_millis(200);
        let e = client(port).get("models", by).await.err().unwrap();
        assert!(matches!(e, Error::Timeout { sent: false }), "{e:?}");
        assert!(!e.sent());
    }

    #[tokio::test]
    async fn interim_heads_chunked_and_close_delimited_answers() {
        let (client, seen) = server(vec![
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            "HTTP/1.1 503 Busy\r\nconnection: close\r\n\r\nno luck",
        ])
        .await;
        let r = client.get("models", soon()).await.unwrap();
        assert_eq!(r.body.bytes(100).await.unwrap(), "ab");
        let r = client.get("models", soon()).await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body.bytes(100).await.unwrap(), "no luck");
        assert_eq!(seen.conns(), 1);
        // The close-delimited answer used the connection up.
        assert!(client.lock().is_empty());
        let big = client.post("x", b"{}", soon()).await.unwrap();
        assert!(matches!(big.body.bytes(1).await, Err(Error::TooLarge(1))));
    }

    #[tokio::test]
    async fn dropping_a_body_closes_its_connection() {
        // An answer that never ends.
        let (client, seen) = server(vec![
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
        ])
        .await;
        for _ in 0..2 {
            let mut r = client.post("x", b"{}", soon()).await.unwrap();
            assert_eq!(r.body.chunk().await.unwrap().unwrap(), "ab");
        }
        assert_eq!(seen.conns(), 2);
    }

    #[tokio::test]
    async fn refused_connections_and_broken_answers_are_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let origin = Origin::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let client = Client::new(origin, None, Duration::from_secs(1), None).unwrap();
        assert!(matches!(
            client.get("models", soon()).await,
            Err(Error::Connect(..))
        ));
        let (client, _) = server(vec!["HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"]).await;
        let r = client.get("models", soon()).await.unwrap();
        assert!(matches!(r.body.bytes(100).await, Err(Error::Closed)));
        let (client, _) = server(vec!["not http\r\n\r\n"]).await;
        assert!(matches!(
            client.get("models", soon()).await,
            Err(Error::Protocol(_))
        ));
    }

    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn https_upstreams_are_verified_and_kept_alive() {
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio_rustls::rustls::{ServerConfig, crypto};

        let cert = CertificateDer::from(include_bytes!("../testdata/cert.der").to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            include_bytes!("../testdata/key.der").to_vec(),
        ));
        let server =
            ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (port, seen) = serve(move |s, seen| {
            let accept = acceptor.accept(s);
            async move {
                if let Ok(mut tls) = accept.await {
                    answer(&mut tls, &[OK, OK, OK], &seen).await;
                }
            }
        })
        .await;
        let origin = Origin::parse(&format!("https://127.0.0.1:{port}/v1")).unwrap();
        assert_eq!(Origin::parse("https://h/v1").unwrap().port, 443);

        // The public roots do not vouch for a self-signed certificate.
        let public = Client::new(origin.clone(), None, Duration::from_secs(2), None).unwrap();
        assert!(matches!(
            public.get("models", soon()).await,
            Err(Error::Connect(..))
        ));

        // Trusting the test certificate through `ca_file`.
        let dir = env!("CARGO_MANIFEST_DIR");
        let ca = Path::new(dir).join("src/testdata/cert.pem");
        let client = Client::new(origin, None, Duration::from_secs(2), Some(&ca)).unwrap();
        let not_pem = Path::new(dir).join("Cargo.toml");
        let e = Client::new(
            Origin::parse("https://h/v1").unwrap(),
            None,
            Duration::from_secs(1),
            Some(&not_pem),
        )
        .err()
        .unwrap();
        assert!(e.contains("no certificate"), "{e}");
        three_oks(&client).await;
        // One refused handshake, then one kept-alive connection for the three requests.
        assert_eq!(seen.conns(), 2);
    }
}
