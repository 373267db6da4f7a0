//! Server-sent events, as OpenAI-compatible servers send them: `data: …` lines, events
//! separated by a blank line, `\n` or `\r\n` line ends; comments (`: …`) and other fields
//! (`event:`, `id:`) are skipped. Bytes arrive in arbitrary pieces.
//!
//! An upstream is a server tokenfab does not control: one that streams bytes without ever
//! ending a line or an event would otherwise grow the buffer until the process runs out of
//! memory (the idle timeout never fires while bytes keep coming), so an event is refused
//! past [`MAX_EVENT`] bytes.

/// The most bytes one event may hold, its unfinished line included: far above any
/// chunk an engine streams (a delta of a few tokens, or a usage object).
pub const MAX_EVENT: usize = 4 << 20;

/// An event grew past [`MAX_EVENT`] bytes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the upstream sent an event of more than {MAX_EVENT} bytes")]
pub struct TooLarge;

/// Splits a byte stream into the `data` payload of each event.
#[derive(Default)]
pub struct Events {
    buf: Vec<u8>,
    /// The data lines of the event being read.
    data: Option<String>,
}

impl Events {
    /// Adds bytes; returns the payloads of the events they complete, or [`TooLarge`] once
    /// the event being read holds more than [`MAX_EVENT`] bytes (the stream is then broken:
    /// push no more).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, TooLarge> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buf[start..start + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                if let Some(d) = self.data.take() {
                    out.push(d);
                }
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                let text = String::from_utf8_lossy(rest);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&text);
                    }
                    None => self.data = Some(text.into_owned()),
                }
            }
            start += nl + 1;
            if self.data.as_ref().map_or(0, String::len) > MAX_EVENT {
                return Err(TooLarge);
            }
        }
        self.buf.drain(..start);
        if self.buf.len() + self.data.as_ref().map_or(0, String::len) > MAX_EVENT {
            return Err(TooLarge);
        }
        Ok(out)
    }

    /// The last event, when the stream ended without its blank line.
    pub fn finish(&mut self) -> Result<Option<String>, TooLarge> {
        let rest = std::mem::take(&mut self.buf);
        // The last line may itself end the event (a lone `\r` is a blank line).
        let mut ended = Vec::new();
        if !rest.is_empty() {
            ended = self.push(&rest)?;
            ended.extend(self.push(b"\n")?);
        }
        Ok(ended.pop().or_else(|| self.data.take()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_at_any_byte() {
        let stream = b": ping\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut e = Events::default();
            let mut got = e.push(&stream[..cut]).unwrap();
            got.extend(e.push(&stream[cut..]).unwrap());
            assert_eq!(got, ["{\"a\":1}", "line1\nline2", "[DONE]"], "cut at {cut}");
            assert_eq!(e.finish(), Ok(None));
        }
    }

    #[test]
    fn an_unterminated_last_event_is_kept() {
        let mut e = Events::default();
        assert!(e.push(b"data: {\"b\":2}").unwrap().is_empty());
        assert_eq!(e.finish(), Ok(Some("{\"b\":2}".into())));
        let mut e = Events::default();
        e.push(b"data: {\"c\":3}\n\r").unwrap();
        assert_eq!(e.finish(), Ok(Some("{\"c\":3}".into())));
    }

    #[test]
    fn an_endless_line_or_event_is_refused_not_buffered() {
        let piece = vec![b'x'; 64 << 10];
        let mut line = Events::default();
        line.push(b"data: ").unwrap();
        let pushes = std::iter::repeat_with(|| line.push(&piece))
            .take(MAX_EVENT / piece.len() + 2)
            .collect::<Vec<_>>();
        assert_eq!(pushes.last(), Some(&Err(TooLarge)));
        // Many short lines of one event that never ends.
        let mut event = Events::default();
        let lines = b"data: 0123456789abcdef0123456789abcdef\n".repeat(4096);
        // Each line's data is 33 of its 39 bytes: twice the bound in lines passes it.
        let pushes = std::iter::repeat_with(|| event.push(&lines))
            .take(2 * MAX_EVENT / lines.len())
            .collect::<Vec<_>>();
        assert_eq!(pushes.last(), Some(&Err(TooLarge)));
        // Events that end stay well under the bound, however long the stream.
        let mut ok = Events::default();
        let events = b"data: {}\n\n".repeat(100_000);
        for _ in 0..8 {
            assert_eq!(ok.push(&events).unwrap().len(), 100_000);
        }
    }
}
