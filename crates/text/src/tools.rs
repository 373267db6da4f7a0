//! Tool calls in a model's answer: the Hermes format that Qwen2.5, Qwen3 and Hermes models
//! are trained to write, a JSON object between `<tool_call>` and `</tool_call>` lines:
//!
//! ```text
//! Let me look that up.
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! [`parse_complete`] is the specification; [`ToolCallParser`] its incremental form,
//! property-tested to give the same pieces for every chunking of the same text.
//!
//! - Text outside the tags is content. A possible start of `<tool_call>` is held back
//!   until it is decided, so a partial tag never reaches the client as content.
//! - A call is released whole, when its closing tag arrives (or the answer ends inside
//!   it): only then can its JSON be checked. A call whose JSON does not parse, or that has
//!   no string `name`, comes back as content, tags included, rather than being lost.
//! - `arguments` (or `parameters`, which Llama-style models write) may be an object or a
//!   string holding one; it is returned as compact JSON text (OpenAI's `arguments`).
//! - An answer that is nothing but one such JSON object naming an offered tool is a call
//!   too (Llama 3.x's JSON format, and what small Qwen models write when they drop the
//!   tags): with [`ToolCallParser::new`]'s tool names, an answer whose first character is
//!   `{` is held until its end and decided then.

use serde_json::Value;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One complete tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    /// The arguments as compact JSON text.
    pub arguments: String,
}

/// A piece of an answer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Call(Call),
}

/// The pieces of a whole answer, `tools` the names a bare JSON call may use.
pub fn parse_complete(text: &str, tools: &[String]) -> Vec<Piece> {
    let mut p = ToolCallParser::new(tools.to_vec());
    let mut out = p.push(text);
    for piece in p.finish() {
        emit(&mut out, piece);
    }
    out
}

/// The incremental parser: push the answer's text as it comes, then [`finish`].
///
/// [`finish`]: ToolCallParser::finish
#[derive(Debug, Default)]
pub struct ToolCallParser {
    /// Text not yet released: a possible opening tag, the body of an open call, or a
    /// whole answer that may be a bare call.
    held: String,
    in_call: bool,
    /// The tools a bare JSON call may name (none: bare calls are text).
    bare: Vec<String>,
    /// Whether the answer's first non-space character has been seen, and was `{`.
    start: Start,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Start {
    #[default]
    Undecided,
    Bare,
    Tagged,
}

impl ToolCallParser {
    /// A parser for an answer to a request offering the tools named `tools`.
    pub fn new(tools: Vec<String>) -> Self {
        ToolCallParser {
            bare: tools,
            ..Default::default()
        }
    }

    /// The pieces `text` completes (adjacent text merged).
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        if self.start == Start::Undecided {
            match self.held.trim_start().chars().next() {
                None => return Vec::new(),
                Some('{') if !self.bare.is_empty() => self.start = Start::Bare,
                Some(_) => self.start = Start::Tagged,
            }
        }
        let mut out = Vec::new();
        if self.start == Start::Bare {
            return out;
        }
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else {
                    break;
                };
                let body = self.held[..end].to_owned();
                self.held.drain(..end + CLOSE.len());
                self.in_call = false;
                emit(&mut out, call_or_text(&body, true));
            } else {
                match self.held.find(OPEN) {
                    Some(at) => {
                        let before = self.held[..at].to_owned();
                        self.held.drain(..at + OPEN.len());
                        self.in_call = true;
                        emit(&mut out, Piece::Text(before));
                    }
                    None => {
                        // Keep the longest tail that could still begin the tag.
                        let keep = partial_tag_len(&self.held);
                        let cut = self.held.len() - keep;
                        let text = self.held[..cut].to_owned();
                        self.held.drain(..cut);
                        emit(&mut out, Piece::Text(text));
                        break;
                    }
                }
            }
        }
        out
    }

    /// The end of the answer: what is held back is released (a call left open by the
    /// end of generation is a call if its JSON is complete).
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        if std::mem::take(&mut self.start) == Start::Bare {
            let call = parse_call(&held).filter(|c| self.bare.contains(&c.name));
            emit(&mut out, call.map_or(Piece::Text(held), Piece::Call));
        } else if std::mem::take(&mut self.in_call) {
            emit(&mut out, call_or_text(&held, false));
        } else {
            emit(&mut out, Piece::Text(held));
        }
        out
    }
}

/// The call that `thought` ends on, if it names one of `tools`: a complete `<tool_call>`
/// block followed by nothing but whitespace. A reasoning model that writes its call inside
/// the thought and then ends the turn meant to call (vLLM #39056 loses such calls); a call
/// quoted mid-thought and then moved past is not this.
pub fn trailing_call(thought: &str, tools: &[String]) -> Option<Call> {
    let body = thought.trim_end().strip_suffix(CLOSE)?;
    let start = body.rfind(OPEN)?;
    parse_call(&body[start + OPEN.len()..]).filter(|c| tools.contains(&c.name))
}

/// Appends `piece`, merging text into a text piece before it and dropping empty text.
fn emit(out: &mut Vec<Piece>, piece: Piece) {
    match (out.last_mut(), piece) {
        (_, Piece::Text(t)) if t.is_empty() => {}
        (Some(Piece::Text(prev)), Piece::Text(t)) => prev.push_str(&t),
        (_, p) => out.push(p),
    }
}

/// How many bytes at the end of `s` are a proper prefix of the opening tag.
fn partial_tag_len(s: &str) -> usize {
    (1..OPEN.len())
        .rev()
        .find(|&n| {
            s.len() >= n && s.is_char_boundary(s.len() - n) && OPEN.starts_with(&s[s.len() - n..])
        })
        .unwrap_or(0)
}

/// The call in `body` (the text between the tags), or the original text as content.
fn call_or_text(body: &str, closed: bool) -> Piece {
    match parse_call(body) {
        Some(call) => Piece::Call(call),
        None => Piece::Text(format!("{OPEN}{body}{}", if closed { CLOSE } else { "" })),
    }
}

fn parse_call(body: &str) -> Option<Call> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let o = v.as_object()?;
    let name = o.get("name")?.as_str()?.to_owned();
    let arguments = match o.get("arguments").or_else(|| o.get("parameters")) {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(s)) => {
            // Arguments written as a string of JSON: that JSON, compacted.
            let inner: Value = serde_json::from_str(s).ok()?;
            inner.is_object().then(|| inner.to_string())?
        }
        Some(args @ Value::Object(_)) => args.to_string(),
        Some(_) => return None,
    };
    Some(Call { name, arguments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(name: &str, arguments: &str) -> Piece {
        Piece::Call(Call {
            name: name.into(),
            arguments: arguments.into(),
        })
    }

    fn text(t: &str) -> Piece {
        Piece::Text(t.into())
    }

    #[test]
    fn calls_and_text_in_order() {
        let out = parse_complete(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}\n</tool_call>",
            &[],
        );
        assert_eq!(
            out,
            [
                text("Let me check.\n"),
                call("get_weather", r#"{"city":"Paris"}"#),
                text("\n"),
                call("time", r#"{"tz":"CET"}"#),
            ]
        );
    }

    #[test]
    fn broken_calls_stay_content() {
        let bad = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": }\n</tool_call>";
        assert_eq!(parse_complete(bad, &[]), [text(bad)]);
        let nameless = "<tool_call>{\"arguments\": {}}</tool_call>";
        assert_eq!(parse_complete(nameless, &[]), [text(nameless)]);
        // Ended by the end of generation inside the tags: a call when its JSON is whole.
        assert_eq!(
            parse_complete("<tool_call>\n{\"name\": \"f\"}\n", &[]),
            [call("f", "{}")]
        );
        assert_eq!(
            parse_complete("<tool_call>\n{\"name\": \"f\", \"argu", &[]),
            [text("<tool_call>\n{\"name\": \"f\", \"argu")]
        );
        // A lone `<` or a different tag is text.
        assert_eq!(parse_complete("a < b <tool", &[]), [text("a < b <tool")]);
        // A bare JSON call: the whole answer, naming an offered tool.
        let f = ["f".to_string()];
        let llama = " {\"name\": \"f\", \"parameters\": {\"a\": 1}}";
        assert_eq!(parse_complete(llama, &f), [call("f", r#"{"a":1}"#)]);
        assert_eq!(parse_complete(llama, &[]), [text(llama)]);
        assert_eq!(parse_complete(llama, &["g".to_string()]), [text(llama)]);
        let prose = "Llama: {\"name\": \"f\", \"parameters\": {\"a\": 1}}";
        assert_eq!(parse_complete(prose, &f), [text(prose)]);
        assert_eq!(
            parse_complete("{\"a\": 1} and more", &f),
            [text("{\"a\": 1} and more")]
        );
    }

    #[test]
    fn a_partial_tag_is_held_back() {
        let mut p = ToolCallParser::new(vec!["f".into()]);
        assert_eq!(p.push("Hi <tool"), [text("Hi ")]);
        assert_eq!(p.push("_ca"), []);
        assert_eq!(
            p.push("ll>{\"name\": \"f\"}</tool_call> ok"),
            [call("f", "{}"), text(" ok")]
        );
        assert_eq!(p.finish(), []);
    }

    #[test]
    fn a_thought_that_ends_on_a_call() {
        let f = ["f".to_string()];
        let call_text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let ends = format!("I should look it up.\n{call_text}\n");
        assert_eq!(trailing_call(&ends, &f).unwrap().arguments, r#"{"a":1}"#);
        // Moved past, unknown, or broken: no call.
        assert!(trailing_call(&format!("{call_text} but no, I know it."), &f).is_none());
        assert!(trailing_call(&ends, &["g".to_string()]).is_none());
        assert!(trailing_call("<tool_call>{\"name\": \"f\",</tool_call>", &f).is_none());
    }

    fn merged(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out = Vec::new();
        for p in pieces {
            emit(&mut out, p);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Streamed = whole, for random texts made of tags, JSON bits and prose, split at
        /// random (character) boundaries.
        #[test]
        fn streaming_agrees_with_the_whole(
            parts in proptest::collection::vec(prop_oneof![
                Just("<tool_call>".to_string()),
                Just("</tool_call>".to_string()),
                Just("<tool".to_string()),
                Just("_call>".to_string()),
                Just("{\"name\": \"f\", \"arguments\": {\"a\": [1, \"</tool\"]}}".to_string()),
                Just("{\"name\": \"g\"}".to_string()),
                Just("\n".to_string()),
                Just(" ".to_string()),
                Just("天气 ".to_string()),
                "[a-z<>/ ]{0,6}",
            ], 0..12),
            cuts in proptest::collection::vec(0usize..64, 0..8),
            bare in any::<bool>(),
        ) {
            let whole: String = parts.concat();
            let tools: Vec<String> = if bare { vec!["f".into(), "g".into()] } else { vec![] };
            let spec = parse_complete(&whole, &tools);
            let chars: Vec<(usize, char)> = whole.char_indices().collect();
            let mut bounds: Vec<usize> = cuts
                .iter()
                .map(|c| chars.get(c % (chars.len() + 1)).map_or(whole.len(), |x| x.0))
                .collect();
            bounds.sort();
            let mut p = ToolCallParser::new(tools);
            let mut out = Vec::new();
            let mut at = 0;
            for b in bounds {
                out.extend(p.push(&whole[at..b]));
                at = b;
            }
            out.extend(p.push(&whole[at..]));
            out.extend(p.finish());
            prop_assert_eq!(merged(out), spec);
        }
    }
}
