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

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Idle connections kept per server; more are closed when their answers end.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than reused.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);
/// The longest response head, and the longest line of chunked framing.
const MAX_HEAD: usize = 64 * 1024;
const MAX_LINE: usize = 4096;

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

/// Where a server's API lives: `http://host:port/base`, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `https`: the connection is wrapped in TLS.
    tls: bool,
    /// `host:port` as written (the `Host` header).
    authority: String,
    /// The name or address to connect to (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// The path before each request's own (`/v1`), without a trailing slash.
    base: String,
}

impl Origin {
    /// Parses a base URL such as `http://10.0.0.5:8000/v1`, refusing what this client
    /// cannot honour (another scheme, https without the `tls` feature, credentials, a
    /// query) with the reason.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let scheme = |s: &str| {
            url.get(..s.len())
                .filter(|p| p.eq_ignore_ascii_case(s))
                .map(|_| &url[s.len()..])
        };
        let (tls, rest) = match (scheme("http://"), scheme("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) if cfg!(feature = "tls") => (true, rest),
            (_, Some(_)) => {
                return Err(format!(
                    "`{url}` is https, and this build has no TLS: build tokenfab with `--features tls`, or reach the upstream over plain http://"
                ));
            }
            _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
        };
        if rest.contains(['?', '#']) {
            return Err(format!(
                "`{url}` has a query or fragment; give the API's base URL"
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(format!(
                "`{url}` holds credentials; give the key as the backend's `api_key`"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{url}` has an invalid port `{p}`"))?;
                (h, port)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let valid = |c: char| c.is_ascii_alphanumeric() || ".-_:".contains(c);
        if host.is_empty() || !host.chars().all(valid) {
            return Err(format!("`{url}` has no valid host"));
        }
        if path.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "`{url}` has spaces or other characters a path cannot hold"
            ));
        }
        Ok(Origin {
            tls,
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            base: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// A connection, plain or TLS.
enum Stream {
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
struct Conn {
    stream: Stream,
    buf: BytesMut,
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

/// Whether a status says the request succeeded (2xx).
pub fn success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// The start of an answer; its body is read on demand.
pub struct Response {
    pub status: u16,
    pub body: Body,
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

    /// `POST {base}/{path}` with a JSON body.
    pub async fn post(&self, path: &str, json: &[u8]) -> Result<Response, Error> {
        self.request("POST", path, Some(json)).await
    }

    /// `GET {base}/{path}`.
    pub async fn get(&self, path: &str) -> Result<Response, Error> {
        self.request("GET", path, None).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&[u8]>,
    ) -> Result<Response, Error> {
        let msg = self.message(method, path, json);
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            match exchange(&mut conn, &msg).await {
                Ok(head) => {
                    return Ok(Response {
                        status: head.status,
                        body: Body {
                            client: self.clone(),
                            conn: Some(conn),
                            framing: head.framing,
                            keep_alive: head.keep_alive,
                        },
                    });
                }
                // The server had closed the kept-alive connection (its idle timeout, a
                // restart) before reading the request: the others are likely as stale.
                Err(Stale) if reused => self.lock().clear(),
                Err(Stale) => return Err(Error::Closed),
                Err(Failed(e)) => return Err(e),
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

    fn checkin(&self, conn: Conn) {
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
                return self.handshake(tcp).await;
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

    #[cfg(feature = "tls")]
    async fn handshake(&self, tcp: TcpStream) -> io::Result<Stream> {
        let name =
            tokio_rustls::rustls::pki_types::ServerName::try_from(self.inner.origin.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = self.inner.tls.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// How a failed exchange failed.
enum ExchangeError {
    /// The connection ended or broke before any byte of an answer: on a reused
    /// connection, the server's closing it while idle, so the request goes out again.
    Stale,
    Failed(Error),
}
use ExchangeError::{Failed, Stale};

/// An answer's head, as far as framing its body goes.
struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
}

/// Sends `msg` and reads the answer's head (skipping interim `1xx` heads).
async fn exchange(conn: &mut Conn, msg: &[u8]) -> Result<Head, ExchangeError> {
    conn.buf.clear();
    let sent = async {
        conn.stream.write_all(msg).await?;
        // A TLS stream may hold the last record until flushed.
        conn.stream.flush().await
    };
    if let Err(e) = sent.await {
        return Err(if broken_pipe(&e) {
            Stale
        } else {
            Failed(e.into())
        });
    }
    let mut got_any = false;
    loop {
        if !conn.buf.is_empty() {
            if let Some(head) = parse_head(&mut conn.buf).map_err(Failed)? {
                return Ok(head);
            }
            if conn.buf.len() > MAX_HEAD {
                return Err(Failed(Error::Protocol(
                    "the response head is too large".into(),
                )));
            }
        }
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if !got_any => return Err(Stale),
            Ok(0) => return Err(Failed(Error::Closed)),
            Ok(_) => got_any = true,
            Err(e) if !got_any && broken_pipe(&e) => return Err(Stale),
            Err(e) => return Err(Failed(e.into())),
        }
    }
}

fn broken_pipe(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Parses a complete head off the front of `buf`, skipping interim `1xx` ones; `None`
/// while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Protocol(e.to_string())),
    };
    let status = r.code.unwrap_or(0);
    let mut keep_alive = r.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    for h in r.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| Error::Protocol(format!("header `{}` is not text", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let l = value
                .parse::<u64>()
                .map_err(|_| Error::Protocol(format!("bad content-length `{value}`")))?;
            if length.is_some_and(|old| old != l) {
                return Err(Error::Protocol("conflicting content-length headers".into()));
            }
            length = Some(l);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    buf.advance(n);
    if (100..200).contains(&status) {
        // Interim: the real head follows (each step consumes bytes, so this ends).
        return parse_head(buf);
    }
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if coded {
        // A coding other than chunked last: the body runs to the connection's end.
        Framing::Close
    } else {
        match length {
            Some(l) => Framing::Length(l),
            None => Framing::Close,
        }
    };
    if matches!(framing, Framing::Close) {
        keep_alive = false;
    }
    Ok(Some(Head {
        status,
        framing,
        keep_alive,
    }))
}

/// Where in a body its framing stands.
#[derive(Debug)]
enum Framing {
    /// Bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes.
    Close,
    Done,
}

/// The state of a chunked body.
#[derive(Debug)]
enum Chunk {
    /// Expecting a size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// Expecting the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// An answer's body. Dropping it before its end closes the connection.
pub struct Body {
    client: Client,
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
}

impl Body {
    /// The next piece of the body as it arrives; `None` at its end. Cancel-safe: a call
    /// dropped while waiting loses nothing.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            if let Some(piece) = next_piece(&mut self.framing, &mut conn.buf)? {
                return Ok(Some(piece));
            }
            if matches!(self.framing, Framing::Done) {
                self.finish();
                return Ok(None);
            }
            let n = conn.stream.read_buf(&mut conn.buf).await?;
            if n == 0 {
                if matches!(self.framing, Framing::Close) {
                    self.framing = Framing::Done;
                    self.conn = None;
                    return Ok(None);
                }
                self.conn = None;
                return Err(Error::Closed);
            }
        }
    }

    /// The whole body, refused past `limit` bytes.
    pub async fn bytes(mut self, limit: usize) -> Result<Bytes, Error> {
        let mut pieces = Vec::new();
        let mut len = 0;
        while let Some(piece) = self.chunk().await? {
            len += piece.len();
            if len > limit {
                return Err(Error::TooLarge(limit));
            }
            pieces.push(piece);
        }
        Ok(match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.swap_remove(0),
            _ => pieces.concat().into(),
        })
    }

    /// The body ended: its connection goes back to the pool if the server keeps it.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.client.checkin(conn);
        }
    }
}

/// The next piece of body that `buf` already holds, advancing `framing`; `None` when more
/// bytes must be read first or the body is done.
fn next_piece(framing: &mut Framing, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
    loop {
        match framing {
            Framing::Done => return Ok(None),
            Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(None);
            }
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                return Ok(Some(buf.split_to(n as usize).freeze()));
            }
            Framing::Close => {
                return Ok((!buf.is_empty()).then(|| buf.split().freeze()));
            }
            Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                let piece = buf.split_to(n as usize).freeze();
                if *left == 0 {
                    *framing = Framing::Chunked(Chunk::DataEnd);
                }
                return Ok(Some(piece));
            }
            Framing::Chunked(state) => {
                let Some(line) = take_line(buf)? else {
                    return Ok(None);
                };
                *state = match state {
                    Chunk::Size => {
                        let size = line.split(|&b| b == b';').next().unwrap_or_default();
                        let size = std::str::from_utf8(size)
                            .ok()
                            .map(str::trim)
                            .and_then(|s| u64::from_str_radix(s, 16).ok())
                            .ok_or_else(|| Error::Protocol("bad chunk size".into()))?;
                        if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        }
                    }
                    Chunk::DataEnd if line.is_empty() => Chunk::Size,
                    Chunk::DataEnd => {
                        return Err(Error::Protocol("a chunk is longer than its size".into()));
                    }
                    Chunk::Trailers if line.is_empty() => {
                        *framing = Framing::Done;
                        return Ok(None);
                    }
                    Chunk::Trailers => Chunk::Trailers,
                    Chunk::Data(_) => unreachable!("handled above"),
                };
            }
        }
    }
}

/// A line (without its `\r\n`) off the front of `buf`, or `None` while it is incomplete.
fn take_line(buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line.freeze()))
        }
        None if buf.len() > MAX_LINE => Err(Error::Protocol("a chunk line is too long".into())),
        None => Ok(None),
    }
}

/// The TLS client setup shared by every backend: rustls with ring, the webpki roots, and
/// ALPN offering HTTP/1.1 only.
#[cfg(feature = "tls")]
mod tls {
    use std::path::Path;
    use std::sync::{Arc, OnceLock};

    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

    pub fn config(roots: RootCertStore) -> ClientConfig {
        let mut cfg =
            ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg
    }

    /// A connector trusting only the PEM certificates in `path`.
    pub fn from_file(path: &Path) -> Result<TlsConnector, String> {
        let bad = |e: &dyn std::fmt::Display| format!("`ca_file` {}: {e}", path.display());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        if roots.is_empty() {
            return Err(bad(&"no certificate in it"));
        }
        Ok(TlsConnector::from(Arc::new(config(roots))))
    }

    /// The connector trusting the webpki roots, shared by every backend.
    pub fn connector() -> TlsConnector {
        static SHARED: OnceLock<TlsConnector> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                TlsConnector::from(Arc::new(config(roots)))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    #[test]
    fn origins() {
        let o = Origin::parse("http://10.0.0.5:8000/v1/").unwrap();
        assert_eq!(
            (
                o.authority.as_str(),
                o.host.as_str(),
                o.port,
                o.base.as_str()
            ),
            ("10.0.0.5:8000", "10.0.0.5", 8000, "/v1")
        );
        let o = Origin::parse("HTTP://[::1]:9/").unwrap();
        assert_eq!((o.host.as_str(), o.port, o.base.as_str()), ("::1", 9, ""));
        let o = Origin::parse("http://vllm.internal").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("vllm.internal", 80));
        for (bad, why) in [
            ("ftp://h/v1", "http://"),
            ("h:80/v1", "http://"),
            ("http://h:x/v1", "port"),
            ("http://u:p@h/v1", "api_key"),
            ("http:///v1", "host"),
            ("http://h/v1?x=1", "query"),
            ("http://h/a b", "path"),
        ] {
            let e = Origin::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// Feeds `wire` to the body framing `framing` in pieces of `step` bytes.
    fn decode(mut framing: Framing, wire: &[u8], step: usize) -> Result<Vec<u8>, Error> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(b) = next_piece(&mut framing, &mut buf)? {
                out.extend_from_slice(&b);
            }
        }
        assert!(matches!(framing, Framing::Done), "{framing:?}");
        assert!(buf.is_empty());
        Ok(out)
    }

    #[test]
    fn chunked_bodies_at_every_cut() {
        let wire =
            b"5;ext=1\r\nhello\r\n1A\r\n, a chunk of 26 bytes.....\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in 1..wire.len() {
            let body = decode(Framing::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(body, b"hello, a chunk of 26 bytes.....");
        }
        let long = b"3\r\nabcd\r\n0\r\n\r\n";
        assert!(decode(Framing::Chunked(Chunk::Size), long, 1).is_err());
        assert!(decode(Framing::Chunked(Chunk::Size), b"zz\r\n", 4).is_err());
        assert_eq!(decode(Framing::Length(3), b"abc", 1).unwrap(), b"abc");
    }

    /// Answers each request on `s` with the next of `answers`, closing after the last.
    async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, answers: Vec<&'static str>) {
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
            if s.write_all(a.as_bytes()).await.is_err() || s.flush().await.is_err() {
                return;
            }
        }
    }

    /// A loopback server handing each connection to `handle`; counts connections.
    /// Returns its port.
    async fn serve<F, Fut>(handle: F) -> (u16, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let count = conns.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handle(s));
            }
        });
        (port, conns)
    }

    /// A server that answers each request on a connection with the next of `answers`,
    /// closing after the last one, and a client of it.
    async fn server(answers: Vec<&'static str>) -> (Client, Arc<AtomicUsize>) {
        let (port, conns) = serve(move |s| answer(s, answers.clone())).await;
        let origin = Origin::parse(&format!("http://127.0.0.1:{port}/v1")).unwrap();
        let client = Client::new(origin, Some("sk-x"), Duration::from_secs(1), None).unwrap();
        (client, conns)
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn keeps_connections_alive() {
        let (client, conns) = server(vec![OK, OK, OK]).await;
        for _ in 0..3 {
            let r = client.post("chat/completions", b"{}").await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body.bytes(100).await.unwrap(), "ok");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        // One answer per connection, then the server closes it.
        let (client, conns) = server(vec![OK]).await;
        for _ in 0..3 {
            let r = client.post("chat/completions", b"{}").await.unwrap();
            assert_eq!(r.body.bytes(100).await.unwrap(), "ok");
            // Let the close arrive (as a server's idle timeout would), or not.
            tokio::task::yield_now().await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn interim_heads_chunked_and_close_delimited_answers() {
        let (client, conns) = server(vec![
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
            "HTTP/1.1 503 Busy\r\nconnection: close\r\n\r\nno luck",
        ])
        .await;
        let r = client.get("models").await.unwrap();
        assert_eq!(r.body.bytes(100).await.unwrap(), "ab");
        let r = client.get("models").await.unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body.bytes(100).await.unwrap(), "no luck");
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        // The close-delimited answer used the connection up.
        assert!(client.lock().is_empty());
        let big = client.post("x", b"{}").await.unwrap();
        assert!(matches!(big.body.bytes(1).await, Err(Error::TooLarge(1))));
    }

    #[tokio::test]
    async fn dropping_a_body_closes_its_connection() {
        // An answer that never ends.
        let (client, conns) = server(vec![
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
        ])
        .await;
        for _ in 0..2 {
            let mut r = client.post("x", b"{}").await.unwrap();
            assert_eq!(r.body.chunk().await.unwrap().unwrap(), "ab");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refused_connections_and_broken_answers_are_errors() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let origin = Origin::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let client = Client::new(origin, None, Duration::from_secs(1), None).unwrap();
        assert!(matches!(
            client.get("models").await,
            Err(Error::Connect(..))
        ));
        let (client, _) = server(vec!["HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"]).await;
        let r = client.get("models").await.unwrap();
        assert!(matches!(r.body.bytes(100).await, Err(Error::Closed)));
        let (client, _) = server(vec!["not http\r\n\r\n"]).await;
        assert!(matches!(
            client.get("models").await,
            Err(Error::Protocol(_))
        ));
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn https_needs_the_tls_feature() {
        let e = Origin::parse("https://api.example.com/v1").unwrap_err();
        assert!(e.contains("--features tls"), "{e}");
    }

    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn https_upstreams_are_verified_and_kept_alive() {
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio_rustls::rustls::{ServerConfig, crypto};

        let cert = CertificateDer::from(include_bytes!("testdata/cert.der").to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            include_bytes!("testdata/key.der").to_vec(),
        ));
        let server =
            ServerConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (port, conns) = serve(move |s| {
            let accept = acceptor.accept(s);
            async move {
                if let Ok(tls) = accept.await {
                    answer(tls, vec![OK, OK, OK]).await;
                }
            }
        })
        .await;
        let origin = Origin::parse(&format!("https://127.0.0.1:{port}/v1")).unwrap();
        assert_eq!(Origin::parse("https://h/v1").unwrap().port, 443);

        // The public roots do not vouch for a self-signed certificate.
        let public = Client::new(origin.clone(), None, Duration::from_secs(2), None).unwrap();
        assert!(matches!(
            public.get("models").await,
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
        for _ in 0..3 {
            let r = client.post("chat/completions", b"{}").await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.body.bytes(100).await.unwrap(), "ok");
        }
        // One refused handshake, then one kept-alive connection for the three requests.
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }
}
