//! `POST /v1/completions`, the legacy text-completion endpoint: the request, the whole
//! response, stream chunks, and the legacy `logprobs` object.

use std::collections::HashMap;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::chat::{FinishReason, StopSpec, StreamOptions, Usage};

/// A completion request: OpenAI's legacy fields plus the sampling extensions the chat
/// endpoint takes (`top_k`, `min_p`, `repetition_penalty`). Every field is optional on the
/// wire, as for chat, so the server names the missing or bad one in its 400.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    /// Text after the completion: a fill-in-the-middle request.
    pub suffix: Option<String>,
    /// Return the prompt in front of the completion (and its tokens' logprobs).
    pub echo: Option<bool>,
    /// The legacy integer form: the `k` most likely alternatives per token (0 = only the
    /// chosen token's logprob); absent or `null` = no logprobs.
    pub logprobs: Option<i64>,
    /// Candidates generated per prompt, of which the `n` most likely are returned.
    pub best_of: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<StopSpec>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub user: Option<String>,
}

/// `prompt` in each of its four forms. A list of strings or of token lists is a batch:
/// one set of choices per prompt.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// One prompt of a batch, as text or as token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

impl Prompt {
    /// The batch's prompts, in order (a single prompt is a batch of one).
    pub fn into_inputs(self) -> Vec<PromptInput> {
        match self {
            Prompt::Text(s) => vec![PromptInput::Text(s)],
            Prompt::Texts(v) => v.into_iter().map(PromptInput::Text).collect(),
            Prompt::Tokens(t) => vec![PromptInput::Tokens(t)],
            Prompt::TokenLists(v) => v.into_iter().map(PromptInput::Tokens).collect(),
        }
    }
}

/// A non-streamed response (`object: "text_completion"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
    pub system_fingerprint: String,
}

/// One choice. In a batch, choice `index` belongs to prompt `index / n`, as OpenAI orders
/// them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<FinishReason>,
}

/// One server-sent event of a streamed completion; the same shape as the whole response
/// (OpenAI's chunks say `text_completion` too), with `usage` only on the last chunk when
/// the client asked for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub system_fingerprint: String,
    pub usage: Option<Usage>,
}

/// The legacy `logprobs` object: parallel lists, one entry per token. An echoed prompt's
/// first token has no logprob (nothing precedes it): `null` in `token_logprobs` and
/// `top_logprobs`. `text_offset[i]` is where token `i` starts in the choice's `text`, in
/// characters (Unicode scalar values, which is what Python's `len` counts), as vLLM
/// computes it: the running length of the token strings before it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    #[schema(value_type = Vec<Option<HashMap<String, f32>>>)]
    pub top_logprobs: Vec<Option<TopLogprobs>>,
    pub text_offset: Vec<u32>,
}

/// One position's alternatives: a JSON object from token string to logprob, most likely
/// first (the order is kept on the wire, which a plain map would not promise).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopLogprobs(pub Vec<(String, f32)>);

impl Serialize for TopLogprobs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for TopLogprobs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = TopLogprobs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object from token to logprob")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLogprobs, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(TopLogprobs(out))
            }
        }
        d.deserialize_map(Pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_form_parses_into_a_batch() {
        let p = |v: &str| {
            serde_json::from_str::<CompletionRequest>(&format!(r#"{{"prompt":{v}}}"#))
                .map(|r| r.prompt.unwrap().into_inputs())
        };
        assert_eq!(p(r#""a""#).unwrap(), vec![PromptInput::Text("a".into())]);
        assert_eq!(
            p(r#"["a","b"]"#).unwrap(),
            vec![PromptInput::Text("a".into()), PromptInput::Text("b".into())]
        );
        assert_eq!(p("[1,2]").unwrap(), vec![PromptInput::Tokens(vec![1, 2])]);
        assert_eq!(
            p("[[1],[2,3]]").unwrap(),
            vec![
                PromptInput::Tokens(vec![1]),
                PromptInput::Tokens(vec![2, 3])
            ]
        );
        assert_eq!(p("[]").unwrap(), vec![]);
        for bad in ["1", r#"["a",1]"#, "[-1]", "[[1],\"a\"]", "{}"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn legacy_logprobs_keep_their_order_and_nulls() {
        let lp = CompletionLogprobs {
            tokens: vec!["a".into(), "b".into()],
            token_logprobs: vec![None, Some(-0.5)],
            top_logprobs: vec![
                None,
                Some(TopLogprobs(vec![("z".into(), -0.5), ("b".into(), -1.0)])),
            ],
            text_offset: vec![0, 1],
        };
        let s = serde_json::to_string(&lp).unwrap();
        assert_eq!(
            s,
            r#"{"tokens":["a","b"],"token_logprobs":[null,-0.5],"top_logprobs":[null,{"z":-0.5,"b":-1.0}],"text_offset":[0,1]}"#
        );
        assert_eq!(serde_json::from_str::<CompletionLogprobs>(&s).unwrap(), lp);
    }
}
