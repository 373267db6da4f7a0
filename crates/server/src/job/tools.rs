//! Tool calling for local models: the request's `tools`, `tool_choice` and
//! `parallel_tool_calls`, checked; how the tools reach the model; and, for `required` or
//! a named function, the constraint that makes the model call one.
//!
//! - **Reaching the model.** The tools go to the model's own chat template as `tools` (the
//!   OpenAI objects, as Qwen2.5's, Qwen3's, Llama 3.x's and Mistral's templates read
//!   them). A template that never mentions `tools` gets the documented fallback instead:
//!   a system-prompt paragraph listing the tools and the `<tool_call>` format.
//! - **The answer.** Calls are read from the answer in the format the template writes
//!   them in (`tokenfab_text::tools::ToolFormat`, read from the template's text; Hermes for
//!   the fallback) by the fold; `tool_choice: "none"` offers no tools.
//! - **`required` and named functions** are constrained decoding: the answer must be one
//!   call (several with `parallel_tool_calls`) in that format, its `name` one of the tools
//!   (the named one) and its `arguments` valid against that tool's `parameters`. Under
//!   `auto` the model chooses; with a `strict` tool, its calls' arguments are held to
//!   their schemas while text stays free.

use serde_json::{Map, Value, json};
use tokenfab_engine::constraint::Grammar;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_text::tools::{Tool, ToolFormat};
use tokenfab_wire::chat::ChatCompletionRequest;

use super::bad;
use crate::error::HttpError;
use crate::fold::ToolOffer;

/// The tools a request offers the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tools {
    /// The tool objects as the template reads them (`{"type": "function", "function":
    /// {...}}`).
    pub list: Vec<Value>,
    pub choice: Choice,
    /// More than one call per answer (OpenAI's default); with `false` only the first call
    /// an answer writes is returned.
    pub parallel: bool,
}

/// `tool_choice`, once tools are offered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Choice {
    Auto,
    Required,
    Named(String),
}

/// The request's tools, or `None` when it offers none (no `tools`, an empty list, or
/// `tool_choice: "none"`).
pub(crate) fn asked(req: &ChatCompletionRequest) -> Result<Option<Tools>, HttpError> {
    let parallel = req.parallel_tool_calls.unwrap_or(true);
    let tools = req.tools.as_deref().unwrap_or_default();
    let choice = req.tool_choice.as_ref().filter(|c| !c.is_null());
    if tools.is_empty() {
        return match choice {
            None => Ok(None),
            Some(c) if c == "none" || c == "auto" => Ok(None),
            Some(_) => Err(bad(
                "tool_choice",
                "`tool_choice` can only be `none` or `auto` without `tools`",
            )),
        };
    }
    let mut names: Vec<&str> = Vec::new();
    let mut list = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let at = |f: &str| format!("tools[{i}]{f}");
        let kind = t.get("type").and_then(Value::as_str);
        if kind != Some("function") {
            return Err(bad(
                &at(".type"),
                "only tools of type `function` are supported",
            ));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(&at(".function"), "a tool needs a `function` object"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(&at(".function.name"), "a function needs a `name`"))?;
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                &at(".function.name"),
                format!("`{name}` is not a function name: 1 to 64 letters, digits, `_` or `-`"),
            ));
        }
        if names.contains(&name) {
            return Err(bad(
                &at(".function.name"),
                format!("two tools are named `{name}`"),
            ));
        }
        names.push(name);
        match f.get("parameters") {
            None | Some(Value::Null) | Some(Value::Object(_)) => {}
            Some(_) => {
                return Err(bad(
                    &at(".function.parameters"),
                    "`parameters` must be a JSON Schema object",
                ));
            }
        }
        if f.get("strict")
            .is_some_and(|s| !s.is_boolean() && !s.is_null())
        {
            return Err(bad(&at(".function.strict"), "`strict` must be a boolean"));
        }
        list.push(t.clone());
    }
    let choice = match choice {
        None => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(bad(
                    "tool_choice",
                    format!(
                        "`{other}` is not a tool choice: use `none`, `auto`, `required` or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                    ),
                ));
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad(
                        "tool_choice",
                        "a named tool choice is {\"type\": \"function\", \"function\": {\"name\": …}}",
                    )
                })?;
            if !names.contains(&name) {
                return Err(bad(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not among the `tools`"),
                ));
            }
            Choice::Named(name.to_owned())
        }
    };
    Ok(Some(Tools {
        list,
        choice,
        parallel,
    }))
}

/// How a call's markers are written in a grammar: a control token of the vocabulary by
/// its id (`<[id]>`: the model writes it as one token, never as text), else as text.
pub(crate) trait Markers {
    fn token(&self, marker: &str) -> Option<u32>;
}

impl Markers for Tokenizer {
    fn token(&self, marker: &str) -> Option<u32> {
        self.token_id(marker)
            .filter(|&id| self.special_text(id).is_some())
    }
}

impl Tools {
    fn functions(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.list
            .iter()
            .filter_map(|t| t.get("function").and_then(Value::as_object))
    }

    /// What the fold needs to read the answers' calls, written in `format`.
    pub(crate) fn offer(&self, format: ToolFormat) -> ToolOffer {
        ToolOffer {
            parallel: self.parallel,
            format,
            tools: self.functions().filter_map(Tool::from_function).collect(),
        }
    }

    /// The grammar that holds the answer to the tool choice, for a model writing calls in
    /// `format`: `required` or a named function, a call (several with parallel calls);
    /// `auto` with a `strict` tool, text or calls whose arguments are valid; `None` for
    /// `auto` without one (the model writes what it likes; its calls are parsed).
    ///
    /// Calls are written as the format's JSON (Qwen3-Coder's XML form is answered with
    /// the JSON form in its tags, which the parser reads too).
    pub(crate) fn grammar(&self, format: ToolFormat, markers: &impl Markers) -> Option<Grammar> {
        let strict = self
            .functions()
            .any(|f| f.get("strict").and_then(Value::as_bool) == Some(true));
        let wanted = match &self.choice {
            Choice::Auto if !strict => return None,
            Choice::Auto | Choice::Required => None,
            Choice::Named(n) => Some(n.as_str()),
        };
        let functions: Vec<&Map<String, Value>> = self
            .functions()
            .filter(|f| wanted.is_none_or(|w| f.get("name").and_then(Value::as_str) == Some(w)))
            .collect();
        let params = |f: &Map<String, Value>| match f.get("parameters") {
            Some(p @ Value::Object(_)) => p.clone(),
            _ => json!({"type": "object"}),
        };
        let lark = |m: &str| match markers.token(m) {
            Some(id) => format!("<[{id}]>"),
            None => Value::from(m).to_string(),
        };
        // The JSON of one call, `key` naming its arguments.
        let json_call = |key: &str| {
            let calls: Vec<Value> = functions
                .iter()
                .map(|f| {
                    json!({
                        "type": "object",
                        "properties": {"name": {"const": f["name"]}, key: params(f)},
                        "required": ["name", key],
                        "additionalProperties": false
                    })
                })
                .collect();
            let schema = json!({
                "anyOf": calls,
                "x-guidance": {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false}
            });
            format!("%json {schema}")
        };
        let open = lark(format.open());
        // `body`: a call after its opening marker; `sep`: what comes between calls.
        let (body, sep, marked) = match format {
            ToolFormat::Hermes | ToolFormat::QwenXml => (
                format!(
                    "\"\\n\" {} \"\\n\" {}",
                    json_call("arguments"),
                    lark(format.close().unwrap_or_default())
                ),
                "\"\\n\"",
                true,
            ),
            ToolFormat::Llama3 => (json_call("parameters"), "\"; \"", false),
            ToolFormat::Mistral => {
                // One array holds every call.
                let more = if self.parallel { " (\", \" item)*" } else { "" };
                (
                    format!("\"[\" item{more} \"]\"\nitem: {}", json_call("arguments")),
                    "",
                    true,
                )
            }
            ToolFormat::MistralArgs => {
                let args = lark("[ARGS]");
                let alternatives: Vec<String> = functions
                    .iter()
                    .map(|f| {
                        format!(
                            "{} {args} %json {}",
                            Value::from(f["name"].as_str().unwrap_or_default()),
                            params(f)
                        )
                    })
                    .collect();
                (alternatives.join(" | "), "", true)
            }
        };
        let more_calls = if self.parallel && format != ToolFormat::Mistral {
            format!(" ({sep} call)*")
        } else {
            String::new()
        };
        let call = if marked {
            format!("call: {open} body\nbody: {body}\n")
        } else {
            format!("call: body\nbody: {body}\n")
        };
        let start = match self.choice {
            Choice::Required | Choice::Named(_) => format!("start: call{more_calls}\n"),
            // Text that never starts a call, or text and then calls.
            Choice::Auto if !marked => {
                format!("start: TEXT | call{more_calls}\nTEXT: /(?s:.*)/ & ~/\\s*\\{{(?s:.*)/\n")
            }
            Choice::Auto if open.starts_with("<[") => {
                format!("start: TEXT? (call{more_calls})?\nTEXT: /(?s:.+)/\n")
            }
            Choice::Auto => {
                let m = regex_escape(format.open());
                format!(
                    "start: TEXT | pre body{more_calls}\nTEXT: /(?s:.*)/ & ~/(?s:.*){m}(?s:.*)/\npre[lazy]: /(?s:.*)/ {open}\n"
                )
            }
        };
        Some(Grammar::Lark(format!("{start}{call}")))
    }

    /// The fallback for a template without tool support: a system-prompt paragraph that
    /// lists the tools and says how to call them (the Hermes format).
    pub(crate) fn system_prompt(&self) -> String {
        let mut s = String::from(
            "You may call functions to help with the user's request. To call one, write a line `<tool_call>`, then a JSON object with the function's `name` and its `arguments`, then a line `</tool_call>`, for example:\n<tool_call>\n{\"name\": \"function_name\", \"arguments\": {\"arg\": \"value\"}}\n</tool_call>\nThe functions:\n",
        );
        for f in self.functions() {
            s.push_str(&Value::Object(f.clone()).to_string());
            s.push('\n');
        }
        s
    }
}

/// `text` as a regex matching it literally, inside a Lark `/…/`.
fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokenfab_engine::constraint::Grammars;
    use tokenfab_engine::gguf::GgufFile;

    fn req(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    fn err(v: Value) -> String {
        let e = asked(&req(v)).unwrap_err();
        e.body.param.unwrap_or_default()
    }

    #[test]
    fn choices_and_their_checks() {
        let t = asked(&req(json!({"tools": [weather()]}))).unwrap().unwrap();
        assert_eq!((t.choice, t.parallel), (Choice::Auto, true));
        assert!(
            asked(&req(json!({"tools": [weather()], "tool_choice": "none"})))
                .unwrap()
                .is_none()
        );
        let t = asked(&req(json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": false})))
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.choice, t.parallel),
            (Choice::Named("get_weather".into()), false)
        );
        for (body, field) in [
            (
                json!({"tools": [{"type": "function", "function": {}}]}),
                "tools[0].function.name",
            ),
            (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (
                json!({"tools": [{"type": "function"}]}),
                "tools[0].function",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"tools": [weather(), weather()]}),
                "tools[1].function.name",
            ),
            (
                json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
                "tools[0].function.parameters",
            ),
            (
                json!({"tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice",
            ),
            (
                json!({"tools": [weather()], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
        ] {
            assert_eq!(err(body.clone()), field, "{body}");
        }
    }

    /// A real vocabulary (Llama 3's, from its vocab-only GGUF) whose reserved control
    /// tokens stand in for Mistral's and Llama's markers.
    struct Vocab(Arc<Tokenizer>);

    impl Markers for Vocab {
        fn token(&self, marker: &str) -> Option<u32> {
            let stand_in = match marker {
                "[TOOL_CALLS]" => 5,
                "[ARGS]" => 6,
                "<|python_tag|>" => 7,
                _ => return None,
            };
            self.0
                .token_id(&format!("<|reserved_special_token_{stand_in}|>"))
        }
    }

    /// Whether `answer` (text, and markers by name) is one the constraint allows whole.
    fn allows(vocab: &Vocab, grammar: &Grammar, answer: &[&str]) -> bool {
        static GRAMMARS: std::sync::OnceLock<Grammars> = std::sync::OnceLock::new();
        let grammars = GRAMMARS.get_or_init(|| Grammars::new(vocab.0.clone()).unwrap());
        let mut c = grammars
            .compile(grammar)
            .unwrap_or_else(|e| panic!("{e}: {grammar:?}"));
        let tokens: Vec<u32> = answer
            .iter()
            .flat_map(|part| match vocab.token(part) {
                Some(id) => vec![id],
                None => vocab.0.encode(part, false, false),
            })
            .chain(vocab.0.eos_id())
            .collect();
        let mut logits = vec![0.0; vocab.0.vocab_size()];
        for t in tokens {
            logits.fill(0.0);
            c.mask(&mut logits, None).unwrap();
            if logits[t as usize] == f32::NEG_INFINITY {
                return false;
            }
            c.commit(t).unwrap();
        }
        true
    }

    /// Each format's grammar, compiled against a real vocabulary, allows the format's
    /// calls with valid arguments and nothing else; under `auto` with a strict tool, text
    /// too, and calls only with valid arguments.
    #[test]
    fn each_format_s_grammar_holds_its_calls() {
        let path = tokenfab_testkit::test_assets_dir().join("ggml-vocab-llama-bpe.gguf");
        let gguf = GgufFile::open(&path)
            .unwrap_or_else(|e| panic!("{e}: run scripts/fetch-test-assets.sh"));
        let vocab = Vocab(Arc::new(Tokenizer::from_gguf(&gguf).unwrap()));
        let tools = |choice: Value, strict: bool| {
            let mut w = weather();
            w["function"]["strict"] = json!(strict);
            asked(&req(json!({"tools": [w], "tool_choice": choice})))
                .unwrap()
                .unwrap()
        };
        let (good, bad) = (r#"{"city": "Paris"}"#, r#"{"town": "Paris"}"#);
        let hermes = |a: &str| {
            format!("<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {a}}}\n</tool_call>")
        };
        let llama = |a: &str| format!("{{\"name\": \"get_weather\", \"parameters\": {a}}}");
        let mistral = |a: &str| format!("[{{\"name\": \"get_weather\", \"arguments\": {a}}}]");
        for (format, good_call, bad_call) in [
            (ToolFormat::Hermes, vec![hermes(good)], vec![hermes(bad)]),
            (ToolFormat::QwenXml, vec![hermes(good)], vec![hermes(bad)]),
            (ToolFormat::Llama3, vec![llama(good)], vec![llama(bad)]),
            (
                ToolFormat::Mistral,
                vec!["[TOOL_CALLS]".into(), mistral(good)],
                vec!["[TOOL_CALLS]".into(), mistral(bad)],
            ),
            (
                ToolFormat::MistralArgs,
                vec![
                    "[TOOL_CALLS]".into(),
                    "get_weather".into(),
                    "[ARGS]".into(),
                    good.into(),
                ],
                vec![
                    "[TOOL_CALLS]".into(),
                    "get_weather".into(),
                    "[ARGS]".into(),
                    bad.into(),
                ],
            ),
        ] {
            let good_call: Vec<&str> = good_call.iter().map(String::as_str).collect();
            let bad_call: Vec<&str> = bad_call.iter().map(String::as_str).collect();
            let text = ["It is sunny in Paris."];
            let text_then_call = [&["Let me check. "][..], &good_call].concat();
            for choice in [
                json!("required"),
                json!({"type": "function", "function": {"name": "get_weather"}}),
            ] {
                let g = tools(choice, false).grammar(format, &vocab).unwrap();
                assert!(allows(&vocab, &g, &good_call), "{format:?}: {g:?}");
                assert!(!allows(&vocab, &g, &bad_call), "{format:?}");
                assert!(!allows(&vocab, &g, &text), "{format:?}");
            }
            assert!(
                tools(json!("auto"), false)
                    .grammar(format, &vocab)
                    .is_none()
            );
            let g = tools(json!("auto"), true).grammar(format, &vocab).unwrap();
            assert!(allows(&vocab, &g, &good_call), "{format:?}: {g:?}");
            assert!(allows(&vocab, &g, &text), "{format:?}: {g:?}");
            assert!(!allows(&vocab, &g, &bad_call), "{format:?}: {g:?}");
            if format != ToolFormat::Llama3 {
                assert!(allows(&vocab, &g, &text_then_call), "{format:?}: {g:?}");
            }
        }
    }
}
