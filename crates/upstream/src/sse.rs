//! Server-sent events, as OpenAI-compatible servers send them: `data: …` lines, events
//! separated by a blank line, `\n` or `\r\n` line ends; comments (`: …`) and other fields
//! (`event:`, `id:`) are skipped. Bytes arrive in arbitrary pieces.

/// Splits a byte stream into the `data` payload of each event.
#[derive(Default)]
pub struct Events {
    buf: Vec<u8>,
    /// The data lines of the event being read.
    data: Option<String>,
}

impl Events {
    /// Adds bytes; returns the payloads of the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
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
        }
        self.buf.drain(..start);
        out
    }

    /// The last event, when the stream ended without its blank line.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            self.push(&rest);
            self.push(b"\n");
        }
        self.data.take()
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
            let mut got = e.push(&stream[..cut]);
            got.extend(e.push(&stream[cut..]));
            assert_eq!(got, ["{\"a\":1}", "line1\nline2", "[DONE]"], "cut at {cut}");
            assert_eq!(e.finish(), None);
        }
    }

    #[test]
    fn an_unterminated_last_event_is_kept() {
        let mut e = Events::default();
        assert!(e.push(b"data: {\"b\":2}").is_empty());
        assert_eq!(e.finish().as_deref(), Some("{\"b\":2}"));
    }
}
