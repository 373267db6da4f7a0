//! Incremental detokenization: token bytes in, complete UTF-8 text out.
//!
//! A byte-level vocabulary splits multi-byte characters across tokens (most CJK characters
//! take two or three tokens in SmolLM2's vocabulary), so a streamed delta must hold back an
//! incomplete character until its last byte arrives; bytes that can never become valid
//! UTF-8 are replaced with U+FFFD rather than stalling the stream.

/// Buffers the bytes of an unfinished character between tokens.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a token's bytes and returns all text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .expect("prefix checked valid"),
                    );
                    start += valid;
                    match e.error_len() {
                        // Invalid bytes: they can never complete, replace and go on.
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += n;
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Ends the stream. What can be left over is the start of a character whose last bytes
    /// were never generated (a `max_tokens` cut in the middle of it): half a character is
    /// not text, so it is dropped rather than sent as U+FFFD.
    pub fn finish(&mut self) {
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_split_characters() {
        let text = "奥运会的传奇名将有哪些?";
        let bytes = text.as_bytes();
        // Feed one byte at a time: never half a character out.
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        for b in bytes {
            let piece = s.push(std::slice::from_ref(b));
            assert!(!piece.contains('\u{FFFD}'));
            out.push_str(&piece);
        }
        s.finish();
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_do_not_stall() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(s.push(&[0xE5, 0xA5]), "");
        s.finish();
        assert_eq!(s.push("好".as_bytes()), "好");
    }
}
