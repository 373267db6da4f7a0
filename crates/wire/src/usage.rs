//! Token counts of one request: the one shape every layer passes. The engine reports it per
//! sequence as it generates, the server sums a request's choices, the platform bills it,
//! upstream answers are read into it; the API's `usage` object is made from it here, and
//! only here ([`From<TokenUsage> for Usage`](Usage), and the embeddings answer's
//! [`EmbeddingUsage`] and the rerank answer's [`RerankTokens`]).

use serde_json::Value;

use crate::chat::{CompletionTokensDetails, PromptTokensDetails, Usage};
use crate::embeddings::EmbeddingUsage;
use crate::rerank::RerankTokens;

/// Tokens a request (or one of its sequences) used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Prompt tokens, counted once per request however many choices it has.
    pub prompt: u64,
    /// Prompt tokens served from a prefix cache (at most `prompt`).
    pub cached: u64,
    /// Every generated token; reasoning tokens are completion tokens too.
    pub completion: u64,
    /// Generated tokens inside the thought, its tags included.
    pub reasoning: u64,
}

impl TokenUsage {
    /// Only a prompt (a request that generated nothing).
    pub fn prompt(prompt: u64) -> TokenUsage {
        TokenUsage {
            prompt,
            ..TokenUsage::default()
        }
    }

    /// Saturating: the counts may come from an upstream's `usage`, which can hold anything.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.completion)
    }

    /// A request of several sequences (`n` choices) over one prompt: generated tokens add
    /// up, the prompt counts once (as OpenAI counts it), with its best prefix-cache hit.
    pub fn merge(self, other: TokenUsage) -> TokenUsage {
        let prompt = self.prompt.max(other.prompt);
        TokenUsage {
            prompt,
            cached: self.cached.max(other.cached).min(prompt),
            completion: self.completion.saturating_add(other.completion),
            reasoning: self.reasoning.saturating_add(other.reasoning),
        }
    }

    /// Reads a reported `usage` object: OpenAI's (`prompt_tokens`, `completion_tokens`,
    /// `total_tokens` and their details), the `input_tokens` / `output_tokens` spelling, or
    /// SiliconFlow's rerank `tokens`. `None` when it holds no count at all.
    pub fn from_reported(usage: &Value) -> Option<TokenUsage> {
        let n = |path: &[&str]| {
            path.iter()
                .try_fold(usage, |v, k| v.get(k))
                .and_then(Value::as_u64)
        };
        let prompt = n(&["prompt_tokens"]).or_else(|| n(&["input_tokens"]));
        let completion = n(&["completion_tokens"]).or_else(|| n(&["output_tokens"]));
        let total = n(&["total_tokens"]);
        if prompt.is_none() && completion.is_none() && total.is_none() {
            return None;
        }
        let completion = completion.unwrap_or(0);
        let prompt = prompt.unwrap_or_else(|| total.unwrap_or(0).saturating_sub(completion));
        Some(TokenUsage {
            prompt,
            cached: n(&["prompt_tokens_details", "cached_tokens"])
                .unwrap_or(0)
                .min(prompt),
            completion,
            reasoning: n(&["completion_tokens_details", "reasoning_tokens"])
                .unwrap_or(0)
                .min(completion),
        })
    }

    /// Whether a reported `usage` object says how many reasoning tokens there were (an
    /// upstream without a reasoning parser leaves it out, and then it must be counted).
    pub fn reports_reasoning(usage: &Value) -> bool {
        usage
            .pointer("/completion_tokens_details/reasoning_tokens")
            .is_some_and(Value::is_u64)
    }
}

/// Sequences over different prompts (a completion request's batch of prompts): every
/// count adds up, the prompts' too.
impl std::ops::Add for TokenUsage {
    type Output = TokenUsage;

    fn add(self, other: TokenUsage) -> TokenUsage {
        TokenUsage {
            prompt: self.prompt + other.prompt,
            cached: self.cached + other.cached,
            completion: self.completion.saturating_add(other.completion),
            reasoning: self.reasoning.saturating_add(other.reasoning),
        }
    }
}

impl From<TokenUsage> for Usage {
    fn from(u: TokenUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt,
            completion_tokens: u.completion,
            total_tokens: u.total(),
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: u.reasoning,
            },
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached,
            },
        }
    }
}

impl From<TokenUsage> for EmbeddingUsage {
    fn from(u: TokenUsage) -> EmbeddingUsage {
        EmbeddingUsage {
            prompt_tokens: u.prompt,
            total_tokens: u.total(),
        }
    }
}

impl From<TokenUsage> for RerankTokens {
    fn from(u: TokenUsage) -> RerankTokens {
        RerankTokens {
            input_tokens: u.prompt,
            output_tokens: u.completion,
            cached_tokens: (u.cached > 0).then_some(u.cached),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn choices_merge_with_the_prompt_counted_once() {
        let a = TokenUsage {
            prompt: 10,
            cached: 4,
            completion: 5,
            reasoning: 2,
        };
        let b = TokenUsage {
            cached: 8,
            completion: 7,
            ..a
        };
        let m = a.merge(b);
        assert_eq!(
            (m.prompt, m.cached, m.completion, m.reasoning),
            (10, 8, 12, 4)
        );
        assert_eq!(TokenUsage::default().merge(a), a);
        let both = a + b;
        assert_eq!(
            (both.prompt, both.cached, both.completion, both.reasoning),
            (20, 12, 12, 4)
        );
        let wire = Usage::from(m);
        assert_eq!(
            (wire.total_tokens, wire.prompt_tokens_details.cached_tokens),
            (22, 8)
        );
    }

    #[test]
    fn reported_usage_in_every_spelling() {
        let full = json!({"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 9},
            "completion_tokens_details": {"reasoning_tokens": 3}});
        let u = TokenUsage::from_reported(&full).unwrap();
        assert_eq!(
            (u.prompt, u.cached, u.completion, u.reasoning),
            (4, 4, 6, 3)
        );
        assert!(TokenUsage::reports_reasoning(&full));
        let c = TokenUsage::from_reported(&json!({"prompt_tokens": 4, "total_tokens": 9})).unwrap();
        assert_eq!((c.prompt, c.completion), (4, 0));
        assert!(!TokenUsage::reports_reasoning(&json!({"prompt_tokens": 4})));
        let r = TokenUsage::from_reported(&json!({"input_tokens": 9, "output_tokens": 0})).unwrap();
        assert_eq!(r.prompt, 9);
        let t = TokenUsage::from_reported(&json!({"total_tokens": 9})).unwrap();
        assert_eq!(t.prompt, 9);
        assert!(TokenUsage::from_reported(&json!({"other": 1})).is_none());
    }
}
