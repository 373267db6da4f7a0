//! What an upstream request used, when the upstream did not say it all: counted with the
//! model's tokenizer (its chat template renders the prompt) where one is configured, else
//! estimated from the text's length, and recorded as such (`Source`) in the ledger.

use serde_json::{Map, Value};
use tokenfab_platform::Used;
use tokenfab_platform::store::Source;
use tokenfab_wire::chat::{ChatMessage, Usage};
use tokenfab_wire::usage::TokenUsage;

use crate::job::{encode_prompt, template_messages};
use crate::state::{Counter, UpstreamModel};

/// Tokens of `text` with the model's tokenizer, else estimated from its length (about
/// four bytes a token in English, fewer elsewhere: an estimate, recorded as one).
pub(super) fn count_text(counter: Option<&Counter>, text: &str) -> (u64, Source) {
    match counter {
        Some(c) => (
            c.tokenizer.encode(text, false, false).len() as u64,
            Source::Counted,
        ),
        None => (text.len().div_ceil(4) as u64, Source::Estimated),
    }
}

/// The prompt's tokens: rendered with the model's chat template where there is one.
pub(super) fn count_prompt(up: &UpstreamModel, messages: &[Value]) -> (u64, Source) {
    if let Some(c) = &up.counter
        && let Some(t) = &c.template
        && let Ok(msgs) =
            serde_json::from_value::<Vec<ChatMessage>>(Value::Array(messages.to_vec()))
        && let Ok(tm) = template_messages(&msgs)
        && let Ok(text) = t.render(&tm, true, &Map::new())
    {
        return (
            encode_prompt(&c.tokenizer, &text).len() as u64,
            Source::Counted,
        );
    }
    count_text(
        up.counter.as_ref(),
        &serde_json::to_string(messages).unwrap_or_default(),
    )
}

/// A completion's prompt (a string, strings, token ids or lists of them): token ids are
/// counted exactly, text with the model's tokenizer where there is one.
pub(super) fn count_completion_prompt(up: &UpstreamModel, prompt: &Value) -> Counted {
    let ids = |v: &Value| {
        v.as_array()
            .filter(|a| a.iter().all(Value::is_u64))
            .map(Vec::len)
    };
    let one = |v: &Value| match (v.as_str(), ids(v)) {
        (Some(text), _) => match &up.counter {
            Some(c) => (
                encode_prompt(&c.tokenizer, text).len() as u64,
                Source::Counted,
            ),
            None => count_text(None, text),
        },
        (None, Some(n)) => (n as u64, Source::Counted),
        (None, None) => count_text(up.counter.as_ref(), &v.to_string()),
    };
    let parts: Vec<(u64, Source)> = match prompt {
        Value::Array(a) if ids(prompt).is_none() => a.iter().map(one).collect(),
        v => vec![one(v)],
    };
    parts.into_iter().fold(
        Counted {
            tokens: 0,
            source: Source::Counted,
        },
        |all, (tokens, source)| Counted {
            tokens: all.tokens + tokens,
            source: weaker(all.source, source),
        },
    )
}

pub(super) fn used(tokens: TokenUsage, source: Source) -> Used {
    Used { tokens, source }
}

/// The API's `usage` object for `u`.
pub(super) fn usage_value(u: TokenUsage) -> Value {
    serde_json::to_value(Usage::from(u)).unwrap_or_default()
}

/// The least exact of two counts' sources: a usage is as exact as its weakest part.
pub(super) fn weaker(a: Source, b: Source) -> Source {
    let rank = |s: Source| match s {
        Source::Engine | Source::Upstream => 0,
        Source::Counted => 1,
        Source::Estimated => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// Usage an upstream reported, completed where it left reasoning tokens out (an upstream
/// whose reasoning parser splits the thought but does not count it, as llama.cpp's
/// server does): the thought passed on (`thought`) is counted here, and the ledger
/// records the count's source.
pub(super) fn reported(
    counter: Option<&Counter>,
    usage: &Value,
    thought: &str,
) -> Option<(TokenUsage, Source)> {
    let mut u = TokenUsage::from_reported(usage)?;
    if TokenUsage::reports_reasoning(usage) || thought.is_empty() {
        return Some((u, Source::Upstream));
    }
    let (reasoning, source) = count_text(counter, thought);
    u.reasoning = reasoning.min(u.completion);
    Some((u, weaker(Source::Upstream, source)))
}

/// The prompt's count and how it was made.
#[derive(Clone, Copy)]
pub(super) struct Counted {
    pub(super) tokens: u64,
    pub(super) source: Source,
}

impl Counted {
    /// What a request that got no answer used.
    pub(super) fn alone(self) -> Used {
        used(TokenUsage::prompt(self.tokens), self.source)
    }

    /// Usage counted here: the prompt's count, `thought`'s as reasoning and `thought` and
    /// `answer` together as the completion.
    pub(super) fn with_text(
        self,
        up: &UpstreamModel,
        thought: &str,
        answer: &str,
    ) -> (TokenUsage, Source) {
        let (reasoning, r_source) = if thought.is_empty() {
            (0, self.source)
        } else {
            count_text(up.counter.as_ref(), thought)
        };
        let (rest, source) = count_text(up.counter.as_ref(), answer);
        let u = TokenUsage {
            completion: reasoning + rest,
            reasoning,
            ..TokenUsage::prompt(self.tokens)
        };
        (u, weaker(weaker(self.source, source), r_source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reasoning_tokens_an_upstream_left_out_are_counted() {
        let thought = "I reason about it at some length.";
        let full = json!({"prompt_tokens": 5, "completion_tokens": 20,
            "completion_tokens_details": {"reasoning_tokens": 12}});
        let (u, source) = reported(None, &full, thought).unwrap();
        assert_eq!((u.reasoning, source), (12, Source::Upstream));
        // llama.cpp's server splits the thought but reports no reasoning tokens: estimated
        // here (no tokenizer configured) and recorded as an estimate.
        let bare = json!({"prompt_tokens": 5, "completion_tokens": 20});
        let (u, source) = reported(None, &bare, thought).unwrap();
        assert_eq!((u.prompt, u.completion), (5, 20));
        assert_eq!(
            (u.reasoning, source),
            (thought.len().div_ceil(4) as u64, Source::Estimated)
        );
        // Never more reasoning than completion; no thought, nothing to count.
        let short = json!({"prompt_tokens": 5, "completion_tokens": 3});
        assert_eq!(reported(None, &short, thought).unwrap().0.reasoning, 3);
        assert_eq!(
            reported(None, &bare, "").unwrap(),
            (TokenUsage::from_reported(&bare).unwrap(), Source::Upstream)
        );
        assert!(reported(None, &json!({}), thought).is_none());
    }
}
