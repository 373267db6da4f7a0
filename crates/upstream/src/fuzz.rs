//! The body of the `upstream` fuzz target in `fuzz/` (cargo-fuzz), kept here so that its
//! saved corpus and every crash found run as ordinary tests on stable:
//! `fuzz/corpus/upstream` and `fuzz/regressions/upstream` are replayed by this module's
//! test.
//!
//! An upstream is a server tokenfab does not control; everything read from one goes
//! through here: the response head and its framing ([`crate::http`]), the event stream
//! ([`crate::sse`]), the stream's and the whole answer's normalisation
//! ([`crate::normalize`]) and the usage it reports.

use serde_json::Value;
use tokenfab_text::reasoning::ThinkTags;
use tokenfab_wire::usage::TokenUsage;

use crate::normalize::{StreamFilter, completion};
use crate::sse::{Events, MAX_EVENT};

/// `data`'s first byte sets the size of the pieces the rest arrives in, as reads from a
/// socket would cut it (1 to 256 bytes); the rest is what the upstream sends: a response
/// head, then a body framed by it. The body goes through the event splitter and the stream
/// normaliser, as a streamed answer's does, and whole through the answer normaliser, as an
/// answer's does. Nothing may panic; the body is never longer than what was sent, and the
/// splitter never holds an event past its bound.
pub fn answer(data: &[u8]) {
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    let mut body = Vec::new();
    let mut events = Events::default();
    let mut stream = StreamFilter::new("fuzz/model", Some(ThinkTags::default()));
    let mut refused = false;
    let read = crate::http::decode(wire.chunks(usize::from(step) + 1), |piece| {
        body.extend_from_slice(&piece);
        if refused {
            return;
        }
        match events.push(&piece) {
            Ok(done) => done.iter().for_each(|d| passed_on(&mut stream, d)),
            Err(_) => refused = true,
        }
    });
    assert!(
        body.len() <= wire.len(),
        "a body longer than the bytes sent"
    );
    if read.is_ok() && !refused {
        match events.finish() {
            Ok(last) => last.iter().for_each(|d| passed_on(&mut stream, d)),
            Err(_) => assert!(body.len() > MAX_EVENT, "an event refused under its bound"),
        }
    }
    if let Some(u) = stream.usage() {
        usage(u);
    }
    let _ = stream.usage_chunk(Value::Null);
    if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
        completion(&mut v, "fuzz/model", Some(&ThinkTags::default()));
        if let Some(u) = v.get("usage") {
            usage(u);
        }
    }
}

/// One event through the stream's normaliser: what it passes on must be JSON.
fn passed_on(stream: &mut StreamFilter, data: &str) {
    if let Ok(Some(out)) = stream.event(data) {
        serde_json::from_str::<Value>(&out).expect("a normalised event is JSON");
    }
}

/// A reported usage read as billing reads it.
fn usage(u: &Value) {
    if let Some(t) = TokenUsage::from_reported(u) {
        assert!(t.cached <= t.prompt && t.reasoning <= t.completion, "{t:?}");
        let _ = t.total();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every saved input: the seed corpus and the crashes found.
    #[test]
    fn upstream_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join("upstream")) else {
                continue;
            };
            for e in entries {
                answer(&std::fs::read(e.unwrap().path()).unwrap());
                n += 1;
            }
        }
        assert!(n > 0, "no upstream corpus");
    }
}
