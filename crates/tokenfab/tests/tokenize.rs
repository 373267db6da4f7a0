//! `POST /tokenize` and `/detokenize` in vLLM's and llama-server's shapes, against the
//! real binary: the default SmolLM2 (a chat model: a conversation's count is the chat
//! request's `prompt_tokens`) and all-MiniLM-L6-v2 (an encoder: its `[CLS]`/`[SEP]`
//! framing when asked), the pieces, the vocabulary's spellings, and the 400s.

mod common;

use common::{MODEL, Server, post, run};
use serde_json::{Value, json};

async fn call(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(s.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[test]
fn a_chat_models_tokenizer_in_both_shapes() {
    let s = Server::start(&[]);
    run(async {
        // llama-server's shape: pieces, no framing by default.
        let (status, v) = call(
            &s,
            "/tokenize",
            json!({"content": "Hello world", "with_pieces": true}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["tokens"],
            json!([{"id": 19556, "piece": "Hello"}, {"id": 905, "piece": " world"}])
        );
        assert_eq!(v["count"], 2);
        // vLLM's: the model named, the vocabulary's spellings.
        let (_, v) = call(
            &s,
            "/tokenize",
            json!({"model": MODEL, "prompt": "Hello world", "return_token_strs": true}),
        )
        .await;
        assert_eq!(v["tokens"], json!([19556, 905]));
        assert_eq!(v["token_strs"], json!(["Hello", "Ġworld"]));
        assert_eq!(v["max_model_len"], 8192);
        // A conversation counts as the chat request's prompt does.
        let messages = json!([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Name a colour."}]);
        let (_, v) = call(&s, "/tokenize", json!({"messages": messages})).await;
        let (status, chat) = post(
            &s,
            &json!({"model": MODEL, "messages": messages, "max_tokens": 1}),
        )
        .await;
        assert_eq!(status, 200, "{chat}");
        assert_eq!(v["count"], chat["usage"]["prompt_tokens"], "{v}");
        let (_, open) = call(
            &s,
            "/tokenize",
            json!({"messages": messages, "add_generation_prompt": false}),
        )
        .await;
        assert!(open["count"].as_u64() < v["count"].as_u64(), "{open}");
        // Back again: the ids decode to the text, under both servers' names.
        let ids = v["tokens"].clone();
        let (status, back) = call(&s, "/detokenize", json!({"tokens": ids})).await;
        assert_eq!(status, 200, "{back}");
        let text = back["content"].as_str().unwrap();
        assert!(
            text.contains("Be brief.") && text.contains("Name a colour."),
            "{text}"
        );
        assert_eq!(back["prompt"], back["content"]);
        for (path, body, param) in [
            ("/tokenize", json!({}), "prompt"),
            (
                "/tokenize",
                json!({"prompt": "a", "content": "b"}),
                "prompt",
            ),
            (
                "/tokenize",
                json!({"prompt": "a", "add_special": true, "add_special_tokens": true}),
                "add_special",
            ),
            (
                "/tokenize",
                json!({"model": "nope", "prompt": "a"}),
                "model",
            ),
            (
                "/tokenize",
                json!({"messages": messages, "tools": [{"type": "function"}]}),
                "tools",
            ),
            ("/detokenize", json!({}), "tokens"),
            ("/detokenize", json!({"tokens": [1, 99999999]}), "tokens[1]"),
            ("/detokenize", json!({"tokens": [-1]}), "tokens[0]"),
        ] {
            let (status, v) = call(&s, path, body.clone()).await;
            assert!(status == 400 || status == 404, "{body}: {v}");
            assert_eq!(v["error"]["param"], param, "{body}: {v}");
        }
    });
}

#[test]
fn an_encoders_tokenizer_frames_when_asked() {
    let s = Server::start(&["--model", "sentence-transformers/all-MiniLM-L6-v2"]);
    run(async {
        let (_, plain) = call(&s, "/tokenize", json!({"content": "Hello world"})).await;
        assert_eq!(plain["tokens"], json!([7592, 2088]));
        let (_, framed) = call(&s, "/tokenize", json!({"prompt": "Hello world"})).await;
        assert_eq!(framed["tokens"], json!([101, 7592, 2088, 102]));
        assert_eq!(framed["max_model_len"], 256);
        let (status, v) = call(
            &s,
            "/tokenize",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(
            (status, &v["error"]["param"]),
            (400, &json!("messages")),
            "{v}"
        );
    });
}
