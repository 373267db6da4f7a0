//! `POST /v1/rerank`, in SiliconFlow's shape: a query and documents in, the documents'
//! relevance out, most relevant first.

use serde::{Deserialize, Serialize};

use crate::usage::TokenUsage;

/// A rerank request. Every field is optional here; the server says which are missing or
/// out of range.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct RerankRequest {
    pub model: Option<String>,
    pub query: Option<String>,
    pub documents: Option<Vec<RerankDocument>>,
    /// The most relevant `top_n` results only (default: all).
    pub top_n: Option<u64>,
    /// Whether each result carries its document's text.
    pub return_documents: Option<bool>,
    /// A document longer than the model takes is cut into chunks of what fits beside the
    /// query, at most this many, overlapping by `overlap_tokens`; it scores as its best
    /// chunk.
    pub max_chunks_per_doc: Option<u64>,
    pub overlap_tokens: Option<u64>,
}

/// A document: its text, or an object holding it as `text`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RerankDocument {
    Text(String),
    Object { text: String },
}

impl RerankDocument {
    pub fn text(&self) -> &str {
        match self {
            RerankDocument::Text(t) | RerankDocument::Object { text: t } => t,
        }
    }
}

/// The answer: results sorted by `relevance_score`, highest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RerankResponse {
    pub id: String,
    pub results: Vec<RerankResult>,
    pub meta: RerankMeta,
    pub tokens: RerankTokens,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RerankResult {
    /// The document's place in the request.
    pub index: usize,
    pub relevance_score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<DocumentText>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentText {
    pub text: String,
}

#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct RerankMeta {
    pub tokens: RerankTokens,
}

/// A rerank answer's token counts: input only (a reranker generates nothing). A chat
/// model judging relevance also says how many input tokens came from its prefix cache
/// (the shared instruction and query, computed once), when any did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RerankTokens {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
}

impl RerankResponse {
    /// The answer for `results` (any order; sorted here, ties by index), cut to `top_n`.
    pub fn new(
        id: String,
        mut results: Vec<RerankResult>,
        top_n: Option<usize>,
        usage: TokenUsage,
    ) -> RerankResponse {
        results.sort_by(|a, b| {
            b.relevance_score
                .total_cmp(&a.relevance_score)
                .then(a.index.cmp(&b.index))
        });
        if let Some(n) = top_n {
            results.truncate(n);
        }
        let tokens = RerankTokens::from(usage);
        RerankResponse {
            id,
            results,
            meta: RerankMeta { tokens },
            tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn documents_are_texts_or_objects() {
        let r: RerankRequest = serde_json::from_value(
            json!({"model": "m", "query": "q", "documents": ["a", {"text": "b"}]}),
        )
        .unwrap();
        let docs = r.documents.unwrap();
        assert_eq!((docs[0].text(), docs[1].text()), ("a", "b"));
        assert!(
            serde_json::from_value::<RerankRequest>(json!({"documents": [{"body": "b"}]})).is_err()
        );
    }

    #[test]
    fn results_are_sorted_and_cut() {
        let result = |index, relevance_score| RerankResult {
            index,
            relevance_score,
            document: None,
        };
        let r = RerankResponse::new(
            "id".into(),
            vec![
                result(0, 0.1),
                result(1, 0.9),
                result(2, 0.5),
                result(3, 0.9),
            ],
            Some(3),
            TokenUsage::prompt(12),
        );
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"id": "id", "results": [
                {"index": 1, "relevance_score": 0.9}, {"index": 3, "relevance_score": 0.9},
                {"index": 2, "relevance_score": 0.5}],
                "meta": {"tokens": {"input_tokens": 12, "output_tokens": 0}},
                "tokens": {"input_tokens": 12, "output_tokens": 0}})
        );
    }
}
