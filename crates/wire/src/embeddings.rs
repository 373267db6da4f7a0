//! `POST /v1/embeddings`, in OpenAI's shape (SiliconFlow's is the same): inputs as text
//! or token ids, one vector each, as floats or base64 of little-endian f32.

use serde::{Deserialize, Serialize};

use crate::usage::TokenUsage;

/// An embeddings request. Every field is optional here; the server says which are
/// missing or out of range.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingsRequest {
    pub model: Option<String>,
    pub input: Option<EmbeddingInput>,
    pub encoding_format: Option<EncodingFormat>,
    /// Matryoshka truncation: the first `dimensions` components, renormalized.
    pub dimensions: Option<u64>,
    /// The client's end-user id, accepted as OpenAI accepts it (for its abuse monitoring;
    /// tokenfab has no use for it).
    pub user: Option<String>,
}

/// What to embed: one text, several, one token array or several.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// The answer: one [`Embedding`] per input, in input order.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

/// A vector as the request's `encoding_format` asked.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    /// Standard base64 of the floats' little-endian bytes (what the `openai` client
    /// decodes with `numpy.frombuffer(..., dtype="float32")`).
    Base64(String),
}

/// An embeddings answer's `usage`: input tokens only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

impl EmbeddingsResponse {
    /// The answer for `vectors` (in input order) of `model`, which used `usage`.
    pub fn new(model: String, vectors: Vec<Vector>, usage: TokenUsage) -> EmbeddingsResponse {
        EmbeddingsResponse {
            object: "list",
            data: vectors
                .into_iter()
                .enumerate()
                .map(|(index, embedding)| Embedding {
                    object: "embedding",
                    index,
                    embedding,
                })
                .collect(),
            model,
            usage: usage.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_input_form_parses() {
        let parse = |v: serde_json::Value| {
            serde_json::from_value::<EmbeddingsRequest>(json!({"model": "m", "input": v}))
                .map(|r| r.input.unwrap())
        };
        assert_eq!(
            parse(json!("hi")).unwrap(),
            EmbeddingInput::Text("hi".into())
        );
        assert_eq!(
            parse(json!(["a", "b"])).unwrap(),
            EmbeddingInput::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            parse(json!([1, 2])).unwrap(),
            EmbeddingInput::Tokens(vec![1, 2])
        );
        assert_eq!(
            parse(json!([[1], [2, 3]])).unwrap(),
            EmbeddingInput::TokenLists(vec![vec![1], vec![2, 3]])
        );
        assert!(parse(json!([1, "a"])).is_err());
        assert!(parse(json!([-1])).is_err());
        assert!(parse(json!({"text": "a"})).is_err());
    }

    #[test]
    fn answers_have_openais_shape() {
        let r = EmbeddingsResponse::new(
            "m".into(),
            vec![
                Vector::Float(vec![0.5, -1.0]),
                Vector::Base64("AAAA".into()),
            ],
            TokenUsage::prompt(7),
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"object": "list", "model": "m",
                   "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
                            {"object": "embedding", "index": 1, "embedding": "AAAA"}],
                   "usage": {"prompt_tokens": 7, "total_tokens": 7}})
        );
    }
}
