//! `/v1/rerank` served locally, both ways. By tokenfab's own encoder, on a cross-encoder
//! conformance file (a seeded BertForSequenceClassification in Hugging Face's layout over
//! all-MiniLM-L6-v2's vocabulary, written by the engine tests' reference script; random
//! weights, so it tests the route, not relevance): SiliconFlow's answer, sorted and cut,
//! each document scored as the engine scores its pair, a long document as its best chunk,
//! and the 400s. By a chat model as relevance judge, on a committed relevance set.

mod common;

use std::process::Command;

use common::{Server, cached, run};
use serde_json::{Value, json};
use tokenfab_engine::encoder::{Encoder, Segmented};
use tokenfab_testkit::TempPath;

fn conformance_reranker() -> TempPath {
    let dir = tokenfab_testkit::temp_dir("reranker");
    let python = std::env::var("TOKENFAB_TEST_PYTHON")
        .expect("TOKENFAB_TEST_PYTHON is not set: run scripts/test.sh");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/tests/python/bert_reference.py"
    );
    let tokenizer =
        cached("sentence-transformers/all-MiniLM-L6-v2").with_file_name("tokenizer.json");
    let status = Command::new(python)
        .args([
            script.as_ref(),
            "make-reranker".as_ref(),
            dir.as_os_str(),
            tokenizer.as_os_str(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

async fn rerank(s: &Server, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(s.url("/v1/rerank"))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The engine's score of each chunk of `doc` beside `query` (`room` tokens a chunk,
/// overlapping by `overlap`), the best of them.
fn engine_score(e: &Encoder, query: &str, doc: &str, room: usize, overlap: usize) -> f32 {
    let q = e.tokenizer.encode(query, false, false);
    let d = e.tokenizer.encode(doc, false, false);
    let mut best = f32::NEG_INFINITY;
    let mut start = 0;
    loop {
        let end = (start + room).min(d.len());
        let (tokens, types) = e.pair(&q, &d[start..end]);
        let s = e
            .run(&[Segmented {
                tokens: &tokens,
                types: &types,
            }])
            .unwrap()[0][0];
        best = best.max(s);
        if end == d.len() {
            return best;
        }
        start = end - overlap;
    }
}

#[test]
fn documents_are_scored_sorted_and_cut() {
    let dir = conformance_reranker();
    let e = Encoder::load(&dir).unwrap();
    let s = Server::start(&[
        "--model",
        dir.to_str().unwrap(),
        "--model-id",
        "test/reranker",
    ]);
    let long = "Retrieval augmented generation finds passages and answers from them. ".repeat(30);
    let docs = [
        "Paris is the capital and largest city of France.",
        "Bananas are rich in potassium.",
        long.as_str(),
        "Berlin ist die Hauptstadt Deutschlands.",
    ];
    let query = "What is the capital of France?";
    run(async {
        let (status, v) = rerank(
            &s,
            &json!({"model": "test/reranker", "query": query,
                    "documents": [docs[0], {"text": docs[1]}, docs[2], docs[3]],
                    "return_documents": true}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert!(v["id"].as_str().unwrap().starts_with("rerank-"));
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        let q_len = e.tokenizer.encode(query, false, false).len();
        let room = e.config.context_length - q_len - 3;
        let mut prev = f64::INFINITY;
        for r in results {
            let i = r["index"].as_u64().unwrap() as usize;
            let got = r["relevance_score"].as_f64().unwrap();
            let want = engine_score(&e, query, docs[i], room, 80.min(room / 2)) as f64;
            assert!(
                (got - want).abs() < 1e-6,
                "document {i}: {got} against {want}"
            );
            assert!(got <= prev, "sorted, highest first: {v}");
            prev = got;
            assert_eq!(r["document"]["text"], docs[i]);
        }
        let tokens = v["tokens"]["input_tokens"].as_u64().unwrap();
        assert!(tokens > 300, "the long document's chunks count: {v}");
        assert_eq!(v["meta"]["tokens"]["input_tokens"], tokens);
        assert_eq!(v["tokens"]["output_tokens"], 0);

        // top_n keeps the best ones, in the same order; no text unless asked.
        let (_, top) = rerank(
            &s,
            &json!({"model": "test/reranker", "query": query, "documents": docs, "top_n": 2}),
        )
        .await;
        let top = top["results"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["index"], results[0]["index"]);
        assert_eq!(top[1]["index"], results[1]["index"]);
        assert!(top[0].get("document").is_none());
    });
}

#[test]
fn what_cannot_be_reranked_is_a_400_naming_it() {
    let dir = conformance_reranker();
    let s = Server::start(&[
        "--model",
        dir.to_str().unwrap(),
        "--model-id",
        "test/reranker",
    ]);
    run(async {
        let m = "test/reranker";
        let cases = [
            (json!({"model": m, "documents": ["a"]}), "query"),
            (json!({"model": m, "query": "q"}), "documents"),
            (
                json!({"model": m, "query": "q", "documents": []}),
                "documents",
            ),
            (
                json!({"model": m, "query": "", "documents": ["a"]}),
                "query",
            ),
            (
                json!({"model": m, "query": "q", "documents": ["a"], "top_n": 0}),
                "top_n",
            ),
            (
                json!({"model": m, "query": "q", "documents": ["a"], "max_chunks_per_doc": 0}),
                "max_chunks_per_doc",
            ),
            (
                json!({"model": m, "query": "q", "documents": ["a"], "overlap_tokens": 100000}),
                "overlap_tokens",
            ),
            (
                json!({"model": m, "query": "word ".repeat(200), "documents": ["a"]}),
                "query",
            ),
            (
                json!({"model": m, "query": "q", "documents": [{"body": "a"}]}),
                "documents[0]",
            ),
        ];
        for (body, param) in cases {
            let (status, v) = rerank(&s, &body).await;
            assert_eq!(status, 400, "{body}: {v}");
            assert_eq!(v["error"]["param"], param, "{body}: {v}");
        }
        // A reranker serves no embeddings.
        let r = reqwest::Client::new()
            .post(s.url("/v1/embeddings"))
            .json(&json!({"model": m, "input": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    });
}

/// A chat model declared a reranker judges relevance: on the relevance set committed with
/// the tests (`data/relevance.json`: each query with one relevant document among three
/// distractors, the relevant one placed second), Qwen2.5-Coder-0.5B-Instruct puts the
/// relevant document first for every query.
#[test]
fn a_chat_model_judge_ranks_the_relevant_document_first() {
    let dir = tokenfab_testkit::temp_dir("judge");
    let config = dir.join("tokenfab.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nid = \"test/judge\"\nsource = {:?}\ntype = \"reranker\"\n",
            cached("Qwen/Qwen2.5-Coder-0.5B-Instruct").to_str().unwrap()
        ),
    )
    .unwrap();
    let s = Server::start(&["--config", config.to_str().unwrap()]);
    let set: Vec<Value> = serde_json::from_str(include_str!("data/relevance.json")).unwrap();
    run(async {
        for case in &set {
            let d = case["distractors"].as_array().unwrap();
            let docs = [&d[0], &case["relevant"], &d[1], &d[2]];
            let (status, v) = rerank(
                &s,
                &json!({"model": "test/judge", "query": case["query"], "documents": docs}),
            )
            .await;
            assert_eq!(status, 200, "{v}");
            let results = v["results"].as_array().unwrap();
            assert_eq!(results.len(), 4);
            assert_eq!(results[0]["index"], 1, "{}: {v}", case["query"]);
            for r in results {
                let p = r["relevance_score"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&p), "{v}");
            }
            // The judging prompts share the instruction and the query (about 66 tokens):
            // the first document's step computes them, the other three take them from the
            // prefix cache. Without the sharing nothing would be cached in the first
            // request, and only the instruction in the later ones.
            let input = v["tokens"]["input_tokens"].as_u64().unwrap();
            let cached = v["tokens"]["cached_tokens"].as_u64().unwrap_or(0);
            assert!(input > 100, "{v}");
            assert!(
                cached >= 3 * 48 && cached < input,
                "prefix computed once: {v}"
            );
            assert_eq!(v["meta"]["tokens"], v["tokens"], "{v}");
        }
        // A judge reads whole documents: chunking is a cross-encoder's.
        let (status, v) = rerank(
            &s,
            &json!({"model": "test/judge", "query": "q", "documents": ["a"], "max_chunks_per_doc": 2}),
        )
        .await;
        assert_eq!(
            (status, &v["error"]["param"]),
            (400, &json!("max_chunks_per_doc")),
            "{v}"
        );
        // A reranker answers no chat.
        let r = reqwest::Client::new()
            .post(s.url("/v1/chat/completions"))
            .json(&json!({"model": "test/judge", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    });
}
