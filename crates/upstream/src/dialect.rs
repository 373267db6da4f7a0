//! How an upstream spells the request fields that steer a reasoning model's thought.
//!
//! Clients send SiliconFlow's `enable_thinking` and `thinking_budget` (tokenfab's own
//! fields for local models too). Each engine behind tokenfab takes them differently, so a
//! model's `dialect` says which engine its backends run, and the request is rewritten
//! into that engine's fields before it goes up:
//!
//! | dialect | `enable_thinking` | `thinking_budget` |
//! |---|---|---|
//! | `openai` (default) | passed on as sent | passed on as sent |
//! | `tokenfab` | passed on (enforced) | passed on (enforced) |
//! | `vllm` | `chat_template_kwargs.enable_thinking` | `thinking_token_budget` |
//! | `llama.cpp` | `chat_template_kwargs.enable_thinking` | `thinking_budget_tokens` |
//! | `sglang` | `chat_template_kwargs.enable_thinking` | refused: SGLang enforces a budget only through a custom logit processor set up on the server |
//!
//! With `openai`, an unknown OpenAI-compatible server gets the fields unchanged and
//! whether it honours them is its own affair; naming the dialect makes it exact.

use serde_json::{Map, Value};

/// The engine an upstream model's backends run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    #[default]
    OpenAi,
    Tokenfab,
    Vllm,
    LlamaCpp,
    Sglang,
}

/// A request field this dialect's upstream cannot enforce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this model's upstream ({dialect}) cannot enforce `{field}`; send the request without it")]
pub struct Unenforceable {
    pub field: &'static str,
    pub dialect: &'static str,
}

const ALL: [Dialect; 5] = [
    Dialect::OpenAi,
    Dialect::Tokenfab,
    Dialect::Vllm,
    Dialect::LlamaCpp,
    Dialect::Sglang,
];

impl Dialect {
    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Tokenfab => "tokenfab",
            Dialect::Vllm => "vllm",
            Dialect::LlamaCpp => "llama.cpp",
            Dialect::Sglang => "sglang",
        }
    }

    pub fn parse(name: &str) -> Option<Dialect> {
        ALL.into_iter().find(|d| d.name() == name)
    }

    /// Every name, for error messages.
    pub fn names() -> String {
        ALL.map(Dialect::name).join(", ")
    }

    /// Rewrites a chat request's `enable_thinking` and `thinking_budget` into this
    /// upstream's own fields (see the module doc).
    pub fn rewrite_thinking(self, body: &mut Map<String, Value>) -> Result<(), Unenforceable> {
        let budget_field = match self {
            Dialect::OpenAi | Dialect::Tokenfab => return Ok(()),
            Dialect::Vllm => Some("thinking_token_budget"),
            Dialect::LlamaCpp => Some("thinking_budget_tokens"),
            Dialect::Sglang => None,
        };
        if let Some(budget) = body.remove("thinking_budget").filter(|b| !b.is_null()) {
            let Some(field) = budget_field else {
                return Err(Unenforceable {
                    field: "thinking_budget",
                    dialect: self.name(),
                });
            };
            body.insert(field.into(), budget);
        }
        if let Some(on) = body.remove("enable_thinking").filter(|b| !b.is_null()) {
            let kwargs = body
                .entry("chat_template_kwargs")
                .or_insert_with(|| Value::Object(Map::new()));
            if !kwargs.is_object() {
                *kwargs = Value::Object(Map::new());
            }
            if let Some(k) = kwargs.as_object_mut() {
                // The template's own spelling, when the client used both, is the one kept.
                k.entry("enable_thinking").or_insert(on);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rewrite(d: Dialect, v: Value) -> Result<Value, Unenforceable> {
        let mut obj = v.as_object().unwrap().clone();
        d.rewrite_thinking(&mut obj).map(|()| Value::Object(obj))
    }

    #[test]
    fn each_dialect_gets_its_own_fields() {
        let asked = json!({"model": "m", "enable_thinking": false, "thinking_budget": 64});
        for d in [Dialect::OpenAi, Dialect::Tokenfab] {
            assert_eq!(rewrite(d, asked.clone()).unwrap(), asked);
        }
        assert_eq!(
            rewrite(Dialect::Vllm, asked.clone()).unwrap(),
            json!({"model": "m", "thinking_token_budget": 64,
                   "chat_template_kwargs": {"enable_thinking": false}})
        );
        assert_eq!(
            rewrite(Dialect::LlamaCpp, asked.clone()).unwrap(),
            json!({"model": "m", "thinking_budget_tokens": 64,
                   "chat_template_kwargs": {"enable_thinking": false}})
        );
        let e = rewrite(Dialect::Sglang, asked).unwrap_err();
        assert_eq!((e.field, e.dialect), ("thinking_budget", "sglang"));
        assert_eq!(
            rewrite(Dialect::Sglang, json!({"enable_thinking": true})).unwrap(),
            json!({"chat_template_kwargs": {"enable_thinking": true}})
        );
    }

    #[test]
    fn template_kwargs_already_sent_are_kept() {
        let v = json!({"enable_thinking": true, "thinking_budget": null,
                       "chat_template_kwargs": {"enable_thinking": false, "x": 1}});
        assert_eq!(
            rewrite(Dialect::Vllm, v).unwrap(),
            json!({"chat_template_kwargs": {"enable_thinking": false, "x": 1}})
        );
        for name in ["openai", "tokenfab", "vllm", "llama.cpp", "sglang"] {
            assert_eq!(Dialect::parse(name).unwrap().name(), name);
        }
        assert!(Dialect::parse("ollama").is_none());
    }
}
