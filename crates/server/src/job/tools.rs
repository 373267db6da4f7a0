//! Tool calling for local models: the request's `tools`, `tool_choice` and
//! `parallel_tool_calls`, checked; how the tools reach the model; and, for `required` or
//! a named function, the constraint that makes the model call one.
//!
//! - **Reaching the model.** The tools go to the model's own chat template as `tools` (the
//!   OpenAI objects, as Qwen2.5's, Qwen3's, Llama 3.x's and Mistral's templates read
//!   them). A template that never mentions `tools` gets the documented fallback instead:
//!   a system-prompt paragraph listing the tools and the `<tool_call>` format.
//! - **The answer.** Calls are read from the answer in the `<tool_call>` JSON format
//!   (`tokenfab_text::tools`) by the fold; `tool_choice: "none"` offers no tools.
//! - **`required` and named functions** are constrained decoding: the answer must be one
//!   call (several with `parallel_tool_calls`), its `name` one of the tools (the named
//!   one) and its `arguments` valid against that tool's `parameters`. Under `auto` the
//!   model chooses and its arguments are not held to the schema, even with `strict`.

use serde_json::{Map, Value, json};
use tokenfab_engine::constraint::Grammar;
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

impl Tools {
    fn functions(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.list
            .iter()
            .filter_map(|t| t.get("function").and_then(Value::as_object))
    }

    /// What the fold needs to read the answers' calls.
    pub(crate) fn offer(&self) -> ToolOffer {
        ToolOffer {
            parallel: self.parallel,
            names: self
                .functions()
                .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect(),
        }
    }

    /// The grammar that makes the model call (`required`, a named function), or `None`
    /// under `auto`.
    pub(crate) fn grammar(&self) -> Option<Grammar> {
        let wanted = match &self.choice {
            Choice::Auto => return None,
            Choice::Required => None,
            Choice::Named(n) => Some(n.as_str()),
        };
        let calls: Vec<Value> = self
            .functions()
            .filter(|f| wanted.is_none_or(|w| f.get("name").and_then(Value::as_str) == Some(w)))
            .map(|f| {
                let params = match f.get("parameters") {
                    Some(p @ Value::Object(_)) => p.clone(),
                    _ => json!({"type": "object"}),
                };
                json!({
                    "type": "object",
                    "properties": {"name": {"const": f["name"]}, "arguments": params},
                    "required": ["name", "arguments"],
                    "additionalProperties": false
                })
            })
            .collect();
        let schema = json!({
            "anyOf": calls,
            "x-guidance": {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false}
        });
        let repeat = if self.parallel {
            " (\"\\n\" call)*"
        } else {
            ""
        };
        Some(Grammar::Lark(format!(
            "start: call{repeat}\ncall: \"<tool_call>\\n\" %json {schema} \"\\n</tool_call>\"\n"
        )))
    }

    /// The fallback for a template without tool support: a system-prompt paragraph that
    /// lists the tools and says how to call them.
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_required_and_named_choices_constrain() {
        let t = |choice: Value| {
            asked(&req(json!({"tools": [weather()], "tool_choice": choice})))
                .unwrap()
                .unwrap()
        };
        assert!(t(json!("auto")).grammar().is_none());
        let Some(Grammar::Lark(g)) = t(json!("required")).grammar() else {
            panic!()
        };
        assert!(
            g.contains("get_weather") && g.contains("(\"\\n\" call)*"),
            "{g}"
        );
    }
}
