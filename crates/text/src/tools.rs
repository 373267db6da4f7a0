//! Tool calls in a model's answer, in the formats the open model families are trained to
//! write ([`ToolFormat`]):
//!
//! ```text
//! Hermes (Qwen2.5, Qwen3):  <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>
//! Qwen3-Coder, Qwen3.5:     <tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>
//! Llama 3.x:                {"name": "get_weather", "parameters": {"city": "Paris"}}   (maybe after <|python_tag|>, `;` between calls)
//! Mistral (v3, Nemo):       [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]
//! Mistral (v11+, Devstral): [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}   ([CALL_ID]id before [ARGS] in Mistral Small 3.2)
//! ```
//!
//! [`parse_complete`] is the specification; [`ToolCallParser`] its incremental form,
//! property-tested to give the same pieces for every chunking of the same text.
//!
//! - Text outside the calls is content. A possible start of the opening marker is held
//!   back until it is decided, so a partial marker never reaches the client as content.
//! - A call is released whole, when its closing tag arrives or the answer ends (the
//!   Llama and Mistral formats have no closing tag: a call runs to the end of the answer):
//!   only then can its JSON be checked. A call that does not parse, or that has no string
//!   `name`, comes back as content, markers included, rather than being lost.
//! - The body is read leniently, whatever the format: a JSON object with `name` and
//!   `arguments` (or `parameters`), an array of them, several separated by `;`, the XML
//!   form, or Mistral's `name[ARGS]{...}`. Arguments may be an object or a string holding
//!   one; they are returned as compact JSON text (OpenAI's `arguments`).
//! - An answer that is nothing but such JSON (an object, or for Mistral an array) naming
//!   offered tools is a call too (Llama 3.x writes no marker for its JSON calls, and small
//!   Qwen models drop their tags): with the offered tools, an answer whose first
//!   character is `{` (or `[`) is held until its end and decided then.

use serde_json::Value;

/// How a model family writes its tool calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>` JSON `</tool_call>` (Qwen2.5, Qwen3, Hermes), and the documented
    /// fallback for templates without tool support.
    #[default]
    Hermes,
    /// `<tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>`
    /// (Qwen3-Coder, Qwen3.5).
    QwenXml,
    /// A JSON object `{"name", "parameters"}`, maybe after `<|python_tag|>` (Llama 3.x).
    Llama3,
    /// `[TOOL_CALLS]` and a JSON array of `{"name", "arguments"}` (Mistral v3 tokenizers).
    Mistral,
    /// `[TOOL_CALLS]NAME[ARGS]{...}` per call (Mistral v11+ tokenizers).
    MistralArgs,
}

impl ToolFormat {
    /// The format a chat template renders tool calls in (the assistant turns it writes
    /// back, and the instructions it gives); Hermes when it shows none of the others.
    pub fn detect(template: &str) -> ToolFormat {
        if template.contains("[TOOL_CALLS]") {
            if template.contains("[ARGS]") {
                ToolFormat::MistralArgs
            } else {
                ToolFormat::Mistral
            }
        } else if template.contains("<function=") {
            ToolFormat::QwenXml
        } else if template.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if template.contains("<|python_tag|>")
            || template.contains("\"parameters\": dictionary of argument name")
        {
            ToolFormat::Llama3
        } else {
            ToolFormat::Hermes
        }
    }

    /// The marker that opens a call.
    pub fn open(self) -> &'static str {
        match self {
            ToolFormat::Hermes | ToolFormat::QwenXml => "<tool_call>",
            ToolFormat::Llama3 => "<|python_tag|>",
            ToolFormat::Mistral | ToolFormat::MistralArgs => "[TOOL_CALLS]",
        }
    }

    /// The marker that closes a call; `None`: a call runs to the end of the answer.
    pub fn close(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes | ToolFormat::QwenXml => Some("</tool_call>"),
            _ => None,
        }
    }

    /// The markers a call is written with: the engine must show them in the answer's text
    /// where the vocabulary has them as control tokens (Llama's and Mistral's do).
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes | ToolFormat::QwenXml => &["<tool_call>", "</tool_call>"],
            ToolFormat::Llama3 => &["<|python_tag|>"],
            ToolFormat::Mistral => &["[TOOL_CALLS]"],
            ToolFormat::MistralArgs => &["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"],
        }
    }

    /// Whether an answer may be a bare call starting with `c`.
    fn bare_start(self, c: char) -> bool {
        c == '{' || (c == '[' && matches!(self, ToolFormat::Mistral | ToolFormat::MistralArgs))
    }
}

/// An offered tool, as the parser needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    pub name: String,
    /// The parameters its schema types as strings: an XML-form value of one is taken as
    /// written, where others are read as JSON when they parse.
    pub string_params: Vec<String>,
}

impl Tool {
    /// The tool an OpenAI function object (`{"name", "parameters"}`) describes.
    pub fn from_function(f: &serde_json::Map<String, Value>) -> Option<Tool> {
        let name = f.get("name")?.as_str()?.to_owned();
        let string_params = f
            .get("parameters")
            .and_then(|p| p.get("properties"))
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .filter(|(_, s)| s.get("type").and_then(Value::as_str) == Some("string"))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        Some(Tool {
            name,
            string_params,
        })
    }
}

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

/// The pieces of a whole answer in `format`, `tools` the tools a bare call may name.
pub fn parse_complete(text: &str, format: ToolFormat, tools: &[Tool]) -> Vec<Piece> {
    let mut p = ToolCallParser::new(format, tools.to_vec());
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
    format: ToolFormat,
    /// Text not yet released: a possible opening marker, the body of an open call, or a
    /// whole answer that may be a bare call.
    held: String,
    in_call: bool,
    /// The tools a bare JSON call may name (none: bare calls are text).
    tools: Vec<Tool>,
    /// Whether the answer's first non-space character has been seen, and began JSON.
    start: Start,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Start {
    #[default]
    Undecided,
    Bare,
    Marked,
}

impl ToolCallParser {
    /// A parser for an answer in `format` to a request offering `tools`.
    pub fn new(format: ToolFormat, tools: Vec<Tool>) -> Self {
        ToolCallParser {
            format,
            tools,
            ..Default::default()
        }
    }

    /// The pieces `text` completes (adjacent text merged).
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        if self.start == Start::Undecided {
            let begun = self.held.trim_start();
            let open = self.format.open();
            match begun.chars().next() {
                // Nothing yet, or what may still be the opening marker (Mistral's begins
                // with `[`, as a bare array does).
                None => return Vec::new(),
                Some(_) if begun.len() < open.len() && open.starts_with(begun) => {
                    return Vec::new();
                }
                Some(c)
                    if self.format.bare_start(c)
                        && !begun.starts_with(open)
                        && !self.tools.is_empty() =>
                {
                    self.start = Start::Bare
                }
                Some(_) => self.start = Start::Marked,
            }
        }
        let mut out = Vec::new();
        if self.start == Start::Bare {
            return out;
        }
        let open = self.format.open();
        loop {
            if self.in_call {
                // Without a closing tag, the call runs to the end of the answer.
                let Some(close) = self.format.close() else {
                    break;
                };
                let Some(end) = self.held.find(close) else {
                    break;
                };
                let body = self.held[..end].to_owned();
                self.held.drain(..end + close.len());
                self.in_call = false;
                self.calls_or_text(&mut out, &body, true);
            } else {
                match self.held.find(open) {
                    Some(at) => {
                        let before = self.held[..at].to_owned();
                        self.held.drain(..at + open.len());
                        self.in_call = true;
                        emit(&mut out, Piece::Text(before));
                    }
                    None => {
                        // Keep the longest tail that could still begin the marker.
                        let keep = partial_marker_len(&self.held, open);
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
    /// end of generation is a call if it is complete).
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        let mut out = Vec::new();
        if std::mem::take(&mut self.start) == Start::Bare {
            match parse_calls(&held, self.format, &self.tools).filter(|c| offered(c, &self.tools)) {
                Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                None => emit(&mut out, Piece::Text(held)),
            }
        } else if std::mem::take(&mut self.in_call) {
            self.calls_or_text(&mut out, &held, false);
        } else {
            emit(&mut out, Piece::Text(held));
        }
        out
    }

    /// The calls in `body` (what follows an opening marker), or the original text as
    /// content. Without a closing tag, each marker's call stands alone: one cut short by
    /// the end of generation is content, the complete ones before it are calls.
    fn calls_or_text(&self, out: &mut Vec<Piece>, body: &str, closed: bool) {
        let open = self.format.open();
        let close = if closed { self.format.close() } else { None };
        let segments: Vec<&str> = match self.format.close() {
            Some(_) => vec![body],
            None => body.split(open).collect(),
        };
        for segment in segments {
            match parse_calls(segment, self.format, &self.tools) {
                Some(calls) => out.extend(calls.into_iter().map(Piece::Call)),
                None => emit(
                    out,
                    Piece::Text(format!("{open}{segment}{}", close.unwrap_or(""))),
                ),
            }
        }
    }
}

/// The calls that `thought` ends on, if they name offered tools: a complete call in the
/// format, followed by nothing but whitespace. A reasoning model that writes its call
/// inside the thought and then ends the turn meant to call (vLLM #39056 loses such calls);
/// a call quoted mid-thought and then moved past is not this.
pub fn trailing_calls(thought: &str, format: ToolFormat, tools: &[Tool]) -> Vec<Call> {
    let open = format.open();
    let body = match format.close() {
        Some(close) => thought.trim_end().strip_suffix(close),
        None => Some(thought.trim_end()),
    };
    body.and_then(|b| b.rfind(open).map(|at| &b[at + open.len()..]))
        .and_then(|b| parse_calls(b, format, tools))
        .filter(|c| offered(c, tools))
        .unwrap_or_default()
}

fn offered(calls: &[Call], tools: &[Tool]) -> bool {
    calls.iter().all(|c| tools.iter().any(|t| t.name == c.name))
}

/// Appends `piece`, merging text into a text piece before it and dropping empty text.
fn emit(out: &mut Vec<Piece>, piece: Piece) {
    match (out.last_mut(), piece) {
        (_, Piece::Text(t)) if t.is_empty() => {}
        (Some(Piece::Text(prev)), Piece::Text(t)) => prev.push_str(&t),
        (_, p) => out.push(p),
    }
}

/// How many bytes at the end of `s` are a proper prefix of `marker`.
fn partial_marker_len(s: &str, marker: &str) -> usize {
    (1..marker.len())
        .rev()
        .find(|&n| {
            s.len() >= n && s.is_char_boundary(s.len() - n) && marker.starts_with(&s[s.len() - n..])
        })
        .unwrap_or(0)
}

/// The calls in a call's body (one or more, in any of the forms the module lists), or
/// `None` when any part of it is not a call.
fn parse_calls(body: &str, format: ToolFormat, tools: &[Tool]) -> Option<Vec<Call>> {
    let mut calls = Vec::new();
    // Formats without a closing tag repeat the opening marker before each call.
    for segment in body.split(format.open()) {
        let segment = segment.trim();
        if segment.is_empty() {
            continue;
        }
        if segment.starts_with("<function=") {
            calls.extend(xml_calls(segment, tools)?);
        } else if let Some((name, args)) = segment
            .split_once("[ARGS]")
            .filter(|_| format == ToolFormat::MistralArgs && !segment.starts_with(['{', '[']))
        {
            // Mistral Small 3.2 writes the call's id between the name and the arguments.
            let name = name.split_once("[CALL_ID]").map_or(name, |(n, _)| n).trim();
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
            let args: Value = serde_json::from_str(args).ok()?;
            (valid && args.is_object()).then_some(())?;
            calls.push(Call {
                name: name.to_owned(),
                arguments: args.to_string(),
            });
        } else {
            calls.extend(json_calls(segment)?);
        }
    }
    (!calls.is_empty()).then_some(calls)
}

/// Successive JSON calls (objects or arrays of them), separated by whitespace, `,` or `;`.
fn json_calls(mut rest: &str) -> Option<Vec<Call>> {
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';' || c == ',');
        if rest.is_empty() {
            return Some(calls);
        }
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = values.next()?.ok()?;
        rest = &rest[values.byte_offset()..];
        match value {
            Value::Array(items) if !items.is_empty() => {
                for item in &items {
                    calls.push(json_call(item)?);
                }
            }
            v => calls.push(json_call(&v)?),
        }
    }
}

fn json_call(v: &Value) -> Option<Call> {
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

/// `<function=NAME>` blocks of `<parameter=KEY>VALUE</parameter>` (Qwen3-Coder's form):
/// a value is JSON when it parses as JSON and its parameter is not typed a string.
fn xml_calls(mut rest: &str, tools: &[Tool]) -> Option<Vec<Call>> {
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Some(calls);
        }
        let (name, after) = rest.strip_prefix("<function=")?.split_once('>')?;
        let (mut inner, after) = after.split_once("</function>")?;
        rest = after;
        let strings = tools
            .iter()
            .find(|t| t.name == name)
            .map_or(&[][..], |t| &t.string_params);
        let mut args = serde_json::Map::new();
        loop {
            inner = inner.trim_start();
            if inner.is_empty() {
                break;
            }
            let (key, after) = inner.strip_prefix("<parameter=")?.split_once('>')?;
            let (value, after) = after.split_once("</parameter>")?;
            inner = after;
            let value = value.strip_prefix('\n').unwrap_or(value);
            let value = value.strip_suffix('\n').unwrap_or(value);
            let json = serde_json::from_str::<Value>(value).ok();
            let value = match json {
                Some(v) if !strings.iter().any(|s| s == key) => v,
                _ => Value::String(value.to_owned()),
            };
            args.insert(key.to_owned(), value);
        }
        calls.push(Call {
            name: name.to_owned(),
            arguments: Value::Object(args).to_string(),
        });
    }
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

    fn tools(names: &[&str]) -> Vec<Tool> {
        names
            .iter()
            .map(|n| Tool {
                name: n.to_string(),
                string_params: vec!["zip".into()],
            })
            .collect()
    }

    const HERMES: ToolFormat = ToolFormat::Hermes;

    #[test]
    fn calls_and_text_in_order() {
        let out = parse_complete(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}\n</tool_call>",
            HERMES,
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
        assert_eq!(parse_complete(bad, HERMES, &[]), [text(bad)]);
        let nameless = "<tool_call>{\"arguments\": {}}</tool_call>";
        assert_eq!(parse_complete(nameless, HERMES, &[]), [text(nameless)]);
        // Ended by the end of generation inside the tags: a call when its JSON is whole.
        assert_eq!(
            parse_complete("<tool_call>\n{\"name\": \"f\"}\n", HERMES, &[]),
            [call("f", "{}")]
        );
        assert_eq!(
            parse_complete("<tool_call>\n{\"name\": \"f\", \"argu", HERMES, &[]),
            [text("<tool_call>\n{\"name\": \"f\", \"argu")]
        );
        // A lone `<` or a different tag is text.
        assert_eq!(
            parse_complete("a < b <tool", HERMES, &[]),
            [text("a < b <tool")]
        );
        // A bare JSON call: the whole answer, naming an offered tool.
        let f = tools(&["f"]);
        let llama = " {\"name\": \"f\", \"parameters\": {\"a\": 1}}";
        assert_eq!(parse_complete(llama, HERMES, &f), [call("f", r#"{"a":1}"#)]);
        assert_eq!(parse_complete(llama, HERMES, &[]), [text(llama)]);
        assert_eq!(parse_complete(llama, HERMES, &tools(&["g"])), [text(llama)]);
        let prose = "Llama: {\"name\": \"f\", \"parameters\": {\"a\": 1}}";
        assert_eq!(parse_complete(prose, HERMES, &f), [text(prose)]);
        assert_eq!(
            parse_complete("{\"a\": 1} and more", HERMES, &f),
            [text("{\"a\": 1} and more")]
        );
    }

    #[test]
    fn every_family_s_format() {
        let fg = tools(&["f", "g"]);
        let (f, g) = (call("f", r#"{"a":1}"#), call("g", r#"{"zip":"075","n":2}"#));
        for (format, answer, want) in [
            // Qwen3-Coder's XML: a string-typed value stays text, others are JSON.
            (
                ToolFormat::QwenXml,
                "Sure.\n<tool_call>\n<function=g>\n<parameter=zip>\n075\n</parameter>\n<parameter=n>\n2\n</parameter>\n</function>\n</tool_call>",
                vec![text("Sure.\n"), g.clone()],
            ),
            // Llama 3.x: bare JSON with `parameters`, `;` between calls, or after the tag.
            (
                ToolFormat::Llama3,
                "{\"name\": \"f\", \"parameters\": {\"a\": 1}}; {\"name\": \"g\", \"parameters\": {\"zip\": \"075\", \"n\": 2}}",
                vec![f.clone(), g.clone()],
            ),
            (
                ToolFormat::Llama3,
                "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"a\": 1}}",
                vec![f.clone()],
            ),
            // Mistral v3: an array after the marker, with text before it.
            (
                ToolFormat::Mistral,
                "Calling. [TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"a\": 1}}, {\"name\": \"g\", \"arguments\": {\"zip\": \"075\", \"n\": 2}}]",
                vec![text("Calling. "), f.clone(), g.clone()],
            ),
            (
                ToolFormat::Mistral,
                "[{\"name\": \"f\", \"arguments\": {\"a\": 1}}]",
                vec![f.clone()],
            ),
            // Mistral v11: name[ARGS]{...}, the marker before each.
            (
                ToolFormat::MistralArgs,
                "[TOOL_CALLS]f[ARGS]{\"a\": 1}[TOOL_CALLS]g[CALL_ID]x7[ARGS]{\"zip\": \"075\", \"n\": 2}",
                vec![f.clone(), g.clone()],
            ),
            // Broken: content, marker included; the complete call before it stays a call.
            (
                ToolFormat::MistralArgs,
                "[TOOL_CALLS]f[ARGS]{\"a\": 1}[TOOL_CALLS]f[ARGS]{\"a\": ",
                vec![f.clone(), text("[TOOL_CALLS]f[ARGS]{\"a\": ")],
            ),
        ] {
            assert_eq!(
                parse_complete(answer, format, &fg),
                want,
                "{format:?}: {answer}"
            );
        }
    }

    #[test]
    fn formats_are_read_from_the_template() {
        for (template, format) in [
            ("{{ '[TOOL_CALLS][' }}", ToolFormat::Mistral),
            (
                "{{ '[TOOL_CALLS]' + name + '[ARGS]' }}",
                ToolFormat::MistralArgs,
            ),
            ("<tool_call>\n<function=", ToolFormat::QwenXml),
            ("<tool_call>\n{{ tool_call | tojson }}", ToolFormat::Hermes),
            ("{{- '<|python_tag|>' }}", ToolFormat::Llama3),
            ("{% if tools %}{{ tools }}{% endif %}", ToolFormat::Hermes),
        ] {
            assert_eq!(ToolFormat::detect(template), format, "{template}");
        }
    }

    #[test]
    fn a_partial_marker_is_held_back() {
        let mut p = ToolCallParser::new(HERMES, tools(&["f"]));
        assert_eq!(p.push("Hi <tool"), [text("Hi ")]);
        assert_eq!(p.push("_ca"), []);
        assert_eq!(
            p.push("ll>{\"name\": \"f\"}</tool_call> ok"),
            [call("f", "{}"), text(" ok")]
        );
        assert_eq!(p.finish(), []);
        let mut p = ToolCallParser::new(ToolFormat::Mistral, tools(&["f"]));
        assert_eq!(p.push("Ok [TOOL_"), [text("Ok ")]);
        assert_eq!(p.push("CALLS][{\"name\": \"f\"}]"), []);
        assert_eq!(p.finish(), [call("f", "{}")]);
    }

    #[test]
    fn a_thought_that_ends_on_a_call() {
        let f = tools(&["f"]);
        let call_text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let ends = format!("I should look it up.\n{call_text}\n");
        assert_eq!(trailing_calls(&ends, HERMES, &f)[0].arguments, r#"{"a":1}"#);
        // Moved past, unknown, or broken: no call.
        assert!(trailing_calls(&format!("{call_text} but no, I know it."), HERMES, &f).is_empty());
        assert!(trailing_calls(&ends, HERMES, &tools(&["g"])).is_empty());
        assert!(trailing_calls("<tool_call>{\"name\": \"f\",</tool_call>", HERMES, &f).is_empty());
        // Without a closing tag: the last marker's calls, if nothing else follows.
        let m = ToolFormat::MistralArgs;
        assert_eq!(
            trailing_calls("So: [TOOL_CALLS]f[ARGS]{}\n", m, &f).len(),
            1
        );
        assert!(trailing_calls("So: [TOOL_CALLS]f[ARGS]{} or not.", m, &f).is_empty());
    }

    fn merged(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out = Vec::new();
        for p in pieces {
            emit(&mut out, p);
        }
        out
    }

    fn format_strategy() -> impl Strategy<Value = ToolFormat> {
        prop_oneof![
            Just(ToolFormat::Hermes),
            Just(ToolFormat::QwenXml),
            Just(ToolFormat::Llama3),
            Just(ToolFormat::Mistral),
            Just(ToolFormat::MistralArgs),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Streamed = whole, in every format, for random texts made of markers, call
        /// bodies and prose, split at random (character) boundaries.
        #[test]
        fn streaming_agrees_with_the_whole(
            format in format_strategy(),
            parts in proptest::collection::vec(prop_oneof![
                Just("<tool_call>".to_string()),
                Just("</tool_call>".to_string()),
                Just("<tool".to_string()),
                Just("_call>".to_string()),
                Just("[TOOL_CALLS]".to_string()),
                Just("[TOOL_".to_string()),
                Just("<|python_tag|>".to_string()),
                Just("f[ARGS]{\"a\": 1}".to_string()),
                Just("<function=f>\n<parameter=a>\n1\n</parameter>\n</function>".to_string()),
                Just("{\"name\": \"f\", \"arguments\": {\"a\": [1, \"</tool\"]}}".to_string()),
                Just("[{\"name\": \"g\"}]".to_string()),
                Just("{\"name\": \"g\"}".to_string()),
                Just("; ".to_string()),
                Just("\n".to_string()),
                Just(" ".to_string()),
                Just("天气 ".to_string()),
                "[a-z<>/\\[\\] ]{0,6}",
            ], 0..12),
            cuts in proptest::collection::vec(0usize..64, 0..8),
            bare in any::<bool>(),
        ) {
            let whole: String = parts.concat();
            let offered = if bare { tools(&["f", "g"]) } else { vec![] };
            let spec = parse_complete(&whole, format, &offered);
            let chars: Vec<(usize, char)> = whole.char_indices().collect();
            let mut bounds: Vec<usize> = cuts
                .iter()
                .map(|c| chars.get(c % (chars.len() + 1)).map_or(whole.len(), |x| x.0))
                .collect();
            bounds.sort();
            let mut p = ToolCallParser::new(format, offered);
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
