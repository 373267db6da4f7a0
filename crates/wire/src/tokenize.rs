//! `POST /tokenize` and `POST /detokenize`, in vLLM's and llama-server's shapes at once:
//! the text comes as `prompt` (vLLM) or `content` (llama-server), or a conversation as
//! `messages` (vLLM), and the answer carries both servers' fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::chat::ChatMessage;

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    /// llama-server's text.
    pub content: Option<String>,
    /// vLLM's text.
    pub prompt: Option<String>,
    /// vLLM's conversation, rendered with the model's own chat template.
    pub messages: Option<Vec<ChatMessage>>,
    /// With `messages`: end with the assistant's turn opened (default true).
    pub add_generation_prompt: Option<bool>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// llama-server's name for adding the tokenizer's own framing (BOS and the like).
    pub add_special: Option<bool>,
    /// vLLM's name for the same.
    pub add_special_tokens: Option<bool>,
    /// Whether special tokens written in the text are read as those tokens (default true).
    pub parse_special: Option<bool>,
    /// llama-server: each token as `{id, piece}`.
    pub with_pieces: Option<bool>,
    /// vLLM: the vocabulary's spelling of each token in `token_strs`.
    pub return_token_strs: Option<bool>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<TokenOut>,
    pub count: usize,
    /// The model's context length (vLLM's name).
    pub max_model_len: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

/// A token of the answer: its id, or with `with_pieces` its id and text.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum TokenOut {
    Id(u32),
    Piece { id: u32, piece: Piece },
}

/// A token's text: a string when its bytes are UTF-8 on their own, else the bytes (as
/// llama-server answers for a token that holds part of a character).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Piece {
    Text(String),
    Bytes(Vec<u8>),
}

impl Piece {
    pub fn of(bytes: &[u8]) -> Piece {
        match std::str::from_utf8(bytes) {
            Ok(s) => Piece::Text(s.to_owned()),
            Err(_) => Piece::Bytes(bytes.to_vec()),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Option<Vec<u32>>,
}

/// The text under both servers' names: `prompt` (vLLM) and `content` (llama-server).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
    pub content: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pieces_are_text_or_bytes() {
        let tokens = vec![
            TokenOut::Id(7),
            TokenOut::Piece {
                id: 8,
                piece: Piece::of(b" hi"),
            },
            TokenOut::Piece {
                id: 9,
                piece: Piece::of(&[0xe4, 0xbd]),
            },
        ];
        assert_eq!(
            serde_json::to_value(&tokens).unwrap(),
            json!([7, {"id": 8, "piece": " hi"}, {"id": 9, "piece": [228, 189]}])
        );
    }
}
