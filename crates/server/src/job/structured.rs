//! Structured outputs: the one constraint a request asks for, whichever dialect spells it,
//! compiled for the model's engine.
//!
//! | field | dialect | constraint |
//! |---|---|---|
//! | `response_format: {"type": "json_object"}` | OpenAI | any JSON object |
//! | `response_format: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` | OpenAI | the schema |
//! | `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` | vLLM | schema, regex, one of the strings, Lark grammar |
//! | `structured_outputs: {"json" \| "regex" \| "choice" \| "grammar" \| "json_object"}` | vLLM (newer) | the same |
//! | `json_schema`, `grammar` (`%llguidance` Lark only) | llama.cpp's server | schema, Lark grammar |
//!
//! Grammars are in llguidance's Lark dialect (the syntax llama.cpp takes after its
//! `%llguidance` marker); GBNF is refused by name. More than one constraint in a request
//! is a 400 naming the second. A schema or grammar llguidance cannot honour is a 400 with
//! its reason, before any token is generated.

use serde_json::{Value, json};
use tokenfab_engine::constraint::{Constraint, Grammar};
use tokenfab_engine::scheduler::EngineHandle;

use super::bad;
use crate::error::HttpError;

/// The request's constraint, compiled for `engine`, or `None` when it asks for none.
pub(crate) fn constraint(
    body: &Value,
    engine: &EngineHandle,
) -> Result<Option<Constraint>, HttpError> {
    let Some((field, grammar)) = requested(body)? else {
        return Ok(None);
    };
    engine
        .constraint(&grammar)
        .map(Some)
        .map_err(|e| bad(field, format!("`{field}` cannot be used: {e}")))
}

/// Reads one field's value into its grammar (`None`: the field asks for no constraint).
type Parse = fn(&Value) -> Result<Option<Grammar>, String>;

/// The one grammar a request asks for and the field that asked, checked for shape only.
fn requested(body: &Value) -> Result<Option<(&'static str, Grammar)>, HttpError> {
    let fields: [(&'static str, Parse); 8] = [
        ("response_format", response_format),
        ("guided_json", |v| schema(v).map(Some)),
        ("guided_regex", |v| {
            string(v).map(|s| Some(Grammar::Regex(s)))
        }),
        ("guided_choice", |v| choices(v).map(Some)),
        ("guided_grammar", |v| {
            string(v).map(|s| Some(Grammar::Lark(s)))
        }),
        ("structured_outputs", structured_outputs),
        ("json_schema", |v| schema(v).map(Some)),
        ("grammar", llama_grammar),
    ];
    let mut found: Option<(&'static str, Grammar)> = None;
    for (field, parse) in fields {
        let Some(v) = body.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(g) = parse(v).map_err(|e| bad(field, e))? else {
            continue;
        };
        if let Some((first, _)) = &found {
            return Err(bad(
                field,
                format!("`{field}` and `{first}` both constrain the output; send one of them"),
            ));
        }
        found = Some((field, g));
    }
    Ok(found)
}

fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| "must be a string".into())
}

/// A JSON Schema given as an object (or, as vLLM also takes it, as JSON text).
fn schema(v: &Value) -> Result<Grammar, String> {
    let schema = match v {
        Value::String(text) => serde_json::from_str(text)
            .map_err(|e| format!("is a string but not a JSON Schema document: {e}"))?,
        other => other.clone(),
    };
    match schema {
        Value::Object(_) | Value::Bool(true) => Ok(Grammar::JsonSchema(schema)),
        _ => Err("must be a JSON Schema (an object)".into()),
    }
}

fn choices(v: &Value) -> Result<Grammar, String> {
    let list = v.as_array().ok_or("must be an array of strings")?;
    let options: Option<Vec<String>> = list.iter().map(|c| c.as_str().map(str::to_owned)).collect();
    match options {
        Some(o) if !o.is_empty() => Ok(Grammar::Choice(o)),
        Some(_) => Err("must list at least one choice".into()),
        None => Err("must be an array of strings".into()),
    }
}

/// OpenAI's `response_format`: `text` (no constraint), `json_object`, `json_schema`.
fn response_format(v: &Value) -> Result<Option<Grammar>, String> {
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or("needs a `type`: `text`, `json_object` or `json_schema`")?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(Grammar::JsonSchema(json!({"type": "object"})))),
        "json_schema" => {
            let spec = v.get("json_schema").filter(|s| s.is_object()).ok_or(
                "of type `json_schema` needs a `json_schema` object with `name` and `schema`",
            )?;
            if !spec.get("name").is_some_and(Value::is_string) {
                return Err("`json_schema.name` is required (a string)".into());
            }
            match spec.get("schema") {
                // OpenAI's default: any JSON object.
                None | Some(Value::Null) => {
                    Ok(Some(Grammar::JsonSchema(json!({"type": "object"}))))
                }
                Some(s) => schema(s)
                    .map(Some)
                    .map_err(|e| format!("`json_schema.schema` {e}")),
            }
        }
        other => Err(format!(
            "of type `{other}` is not supported; use `text`, `json_object` or `json_schema`"
        )),
    }
}

/// vLLM's `structured_outputs` object: exactly one of its constraint keys.
fn structured_outputs(v: &Value) -> Result<Option<Grammar>, String> {
    let o = v.as_object().ok_or("must be an object")?;
    let mut found = None;
    for (key, value) in o {
        if value.is_null() {
            continue;
        }
        let g = match key.as_str() {
            "json" => schema(value).map_err(|e| format!("`json` {e}"))?,
            "regex" => Grammar::Regex(string(value).map_err(|e| format!("`regex` {e}"))?),
            "choice" => choices(value).map_err(|e| format!("`choice` {e}"))?,
            "grammar" => Grammar::Lark(string(value).map_err(|e| format!("`grammar` {e}"))?),
            "json_object" if value == &Value::Bool(true) => {
                Grammar::JsonSchema(json!({"type": "object"}))
            }
            "json_object" => continue,
            other => {
                return Err(format!(
                    "`{other}` is not supported; use `json`, `regex`, `choice`, `grammar` or `json_object`"
                ));
            }
        };
        if found.replace(g).is_some() {
            return Err("must hold exactly one constraint".into());
        }
    }
    Ok(found)
}

/// llama.cpp's `grammar`: llguidance's Lark after the `%llguidance` marker, as llama.cpp
/// itself takes it; GBNF is refused.
fn llama_grammar(v: &Value) -> Result<Option<Grammar>, String> {
    let text = string(v)?;
    match text.trim_start().strip_prefix("%llguidance") {
        Some(rest) => Ok(Some(Grammar::Lark(rest.trim_start_matches(|c| c != '\n').to_owned()))),
        None => Err(
            "GBNF grammars are not supported; send a Lark grammar (llguidance's syntax) after a `%llguidance` line, or a `json_schema`"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: Value) -> Result<Option<(&'static str, Grammar)>, String> {
        requested(&body).map_err(|e| {
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{e:?}");
            e.body.param.unwrap_or_default()
        })
    }

    #[test]
    fn every_dialect_maps_to_one_grammar() {
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let cases = [
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}}),
                "response_format",
            ),
            (json!({"guided_json": s}), "guided_json"),
            (json!({"guided_json": s.to_string()}), "guided_json"),
            (json!({"guided_regex": "[a-z]+"}), "guided_regex"),
            (json!({"guided_choice": ["a", "b"]}), "guided_choice"),
            (json!({"guided_grammar": "start: \"a\""}), "guided_grammar"),
            (
                json!({"structured_outputs": {"regex": "a+"}}),
                "structured_outputs",
            ),
            (
                json!({"structured_outputs": {"json_object": true}}),
                "structured_outputs",
            ),
            (json!({"json_schema": s}), "json_schema"),
            (
                json!({"grammar": "%llguidance {}\nstart: \"a\""}),
                "grammar",
            ),
        ];
        for (body, want) in cases {
            let (got, _) = field(body.clone())
                .unwrap()
                .unwrap_or_else(|| panic!("{body}"));
            assert_eq!(got, want, "{body}");
        }
        let lark = field(json!({"grammar": "%llguidance {}\nstart: \"a\""})).unwrap();
        assert_eq!(lark.unwrap().1, Grammar::Lark("\nstart: \"a\"".into()));
        assert!(
            field(json!({"response_format": {"type": "text"}}))
                .unwrap()
                .is_none()
        );
        assert!(field(json!({"guided_json": null})).unwrap().is_none());
    }

    #[test]
    fn bad_shapes_name_their_field() {
        let cases = [
            (
                json!({"response_format": {"type": "yaml"}}),
                "response_format",
            ),
            (json!({"response_format": {}}), "response_format"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
                "response_format",
            ),
            (json!({"guided_json": 3}), "guided_json"),
            (json!({"guided_json": "not json"}), "guided_json"),
            (json!({"guided_choice": []}), "guided_choice"),
            (json!({"guided_choice": [1]}), "guided_choice"),
            (json!({"guided_regex": ["a"]}), "guided_regex"),
            (
                json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
                "structured_outputs",
            ),
            (
                json!({"structured_outputs": {"xml": "a"}}),
                "structured_outputs",
            ),
            (json!({"grammar": "root ::= \"a\""}), "grammar"),
            (
                json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
                "guided_regex",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(field(body.clone()).unwrap_err(), want, "{body}");
        }
    }
}
