//! An answer's framing: its head, then a body delimited by `content-length`, `chunked`
//! coding or the connection's end.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::Error;
use super::conn::{Client, Conn};

/// The longest response head, and the longest line of chunked framing.
const MAX_HEAD: usize = 64 * 1024;
const MAX_LINE: usize = 4096;

/// The start of an answer; its body is read on demand.
pub struct Response {
    pub status: u16,
    /// The `retry-after` header of an overloaded server, in seconds (an HTTP date is
    /// ignored).
    pub retry_after: Option<u64>,
    pub body: Body,
}

impl Response {
    /// The answer `head` begins, its body still to be read from `conn`.
    pub(super) fn new(head: Head, client: Client, conn: Conn) -> Response {
        Response {
            status: head.status,
            retry_after: head.retry_after,
            body: Body {
                client,
                conn: Some(conn),
                framing: head.framing,
                keep_alive: head.keep_alive,
            },
        }
    }
}

/// An answer's head: what frames its body, and the headers callers read.
pub(super) struct Head {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    retry_after: Option<u64>,
}

/// Parses a complete head off the front of `buf`, skipping interim `1xx` ones; `None`
/// while it is incomplete. Refused once `buf` holds more than [`MAX_HEAD`] bytes without
/// a head: a server sending headers forever. Interim heads are skipped in a loop, not by
/// recursion: a hostile server can send thousands of them in one read.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    loop {
        match parse_one(buf)? {
            Some(head) if (100..200).contains(&head.status) => continue,
            Some(head) => return Ok(Some(head)),
            None if buf.len() > MAX_HEAD => {
                return Err(Error::Protocol("the response head is too large".into()));
            }
            None => return Ok(None),
        }
    }
}

/// One head off the front of `buf`, interim or not; `None` while it is incomplete.
fn parse_one(buf: &mut BytesMut) -> Result<Option<Head>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut r = httparse::Response::new(&mut headers);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Protocol(e.to_string())),
    };
    let status = r.code.unwrap_or(0);
    let mut keep_alive = r.version == Some(1);
    let mut retry_after = None;
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
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse::<u64>().ok();
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
        retry_after,
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

/// An answer whose bytes arrive in `pieces`, read as [`super::Client`] reads one from a
/// socket (the same head and framing code, without the socket): its status, and each piece
/// of its body passed to `body` as it is framed. An answer cut short is [`Error::Closed`].
/// The fuzz target drives it with hostile bytes.
pub(crate) fn decode<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
    mut body: impl FnMut(Bytes),
) -> Result<u16, Error> {
    let mut pieces = pieces.into_iter();
    let mut buf = BytesMut::new();
    let head = loop {
        if let Some(head) = parse_head(&mut buf)? {
            break head;
        }
        buf.extend_from_slice(pieces.next().ok_or(Error::Closed)?);
    };
    let mut framing = head.framing;
    loop {
        while let Some(piece) = next_piece(&mut framing, &mut buf)? {
            body(piece);
        }
        match (&framing, pieces.next()) {
            (Framing::Done, _) => return Ok(head.status),
            (_, Some(piece)) => buf.extend_from_slice(piece),
            (Framing::Close, None) => return Ok(head.status),
            (_, None) => return Err(Error::Closed),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to the body framing `framing` in pieces of `step` bytes.
    fn decode_body(mut framing: Framing, wire: &[u8], step: usize) -> Result<Vec<u8>, Error> {
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
            let body = decode_body(Framing::Chunked(Chunk::Size), wire, step).unwrap();
            assert_eq!(body, b"hello, a chunk of 26 bytes.....");
        }
        let long = b"3\r\nabcd\r\n0\r\n\r\n";
        assert!(decode_body(Framing::Chunked(Chunk::Size), long, 1).is_err());
        assert!(decode_body(Framing::Chunked(Chunk::Size), b"zz\r\n", 4).is_err());
        assert_eq!(decode_body(Framing::Length(3), b"abc", 1).unwrap(), b"abc");
    }

    #[test]
    fn thousands_of_interim_heads_are_skipped_without_recursion() {
        let mut wire = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(20_000);
        wire.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        let mut body = Vec::new();
        let status = decode(wire.chunks(1 << 20), |b| body.extend_from_slice(&b)).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    }

    #[test]
    fn endless_heads_and_cut_answers_are_errors() {
        let flood = [b"x-flood: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
        let wire = [&b"HTTP/1.1 200 OK\r\n"[..], &flood];
        assert!(matches!(decode(wire, |_| {}), Err(Error::Protocol(_))));
        let cut = [&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabc"[..]];
        assert!(matches!(decode(cut, |_| {}), Err(Error::Closed)));
        let close = [&b"HTTP/1.1 200 OK\r\n\r\nto the end"[..]];
        assert_eq!(decode(close, |_| {}).unwrap(), 200);
    }

    #[test]
    fn heads_keep_retry_after_in_seconds() {
        let head = |wire: &str| parse_head(&mut BytesMut::from(wire)).unwrap().unwrap();
        let h = head("HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\ncontent-length: 0\r\n\r\n");
        assert_eq!((h.status, h.retry_after), (429, Some(7)));
        let date = "HTTP/1.1 503 Busy\r\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n";
        assert_eq!(head(date).retry_after, None);
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").retry_after, None);
    }
}
