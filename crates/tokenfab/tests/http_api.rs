//! The chat-completions API over real HTTP against the real binary and the real SmolLM2.

mod common;

use std::time::{Duration, Instant};

use common::{MODEL, Server, post, run, stream_chunks};
use futures_util::StreamExt;
use serde_json::{Value, json};

fn colors() -> Value {
    json!([
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colors."}
    ])
}

#[test]
fn models_health_and_request_ids() {
    let s = Server::start(&[]);
    run(async {
        let r = reqwest::get(s.url("/v1/models")).await.unwrap();
        assert!(!r.headers()["x-request-id"].is_empty());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["data"][0]["id"], MODEL);
        assert_eq!(v["data"][0]["object"], "model");
        let v: Value = reqwest::get(s.url("/v1/models?type=embedding"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 0);
        let r = reqwest::get(s.url("/health")).await.unwrap();
        assert_eq!(r.status(), 200);
        let r = reqwest::get(s.url("/v1/nothing")).await.unwrap();
        assert_eq!(r.status(), 404);
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/v1/nothing")
        );
    });
}

#[test]
fn greedy_answer_usage_and_template() {
    let s = Server::start(&[]);
    run(async {
        let (status, v) = post(
            &s,
            &json!({"model": MODEL, "messages": colors(), "temperature": 0, "max_tokens": 64}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["object"], "chat.completion");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        // llama.cpp's greedy answer on the same weights ends with EOS:
        // "The primary colors are:\n\nRed (R)\nBlue (B)\nYellow (Y)"
        // (ours: "The primary colors are: red, blue, and yellow." -- a near-tie apart).
        for c in ["red", "blue", "yellow"] {
            assert!(content.to_lowercase().contains(c), "{content}");
        }
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        // The GGUF's own template + our tokenizer give llama.cpp's 25 prompt tokens.
        assert_eq!(v["usage"]["prompt_tokens"], 25);
        let u = &v["usage"];
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
        );
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");

        // max_tokens is exact and ends with "length".
        let (_, v) = post(
            &s,
            &json!({"model": MODEL, "messages": colors(), "max_tokens": 3, "temperature": 0}),
        )
        .await;
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        let (_, v) = post(
            &s,
            &json!({"model": MODEL, "messages": colors(), "max_completion_tokens": 2}),
        )
        .await;
        assert_eq!(v["usage"]["completion_tokens"], 2);
    });
}

#[test]
fn stream_matches_non_stream_and_reports_usage() {
    let s = Server::start(&[]);
    run(async {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "奥运会的传奇名将有哪些?"}],
                          "max_tokens": 40, "seed": 7, "temperature": 0.8});
        let (_, whole) = post(&s, &body.clone()).await;
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        sb["stream_options"] = json!({"include_usage": true});
        let chunks = stream_chunks(&s, &sb).await;
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        let mut text = String::new();
        for c in &chunks {
            if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
                assert!(!t.is_empty(), "empty content delta");
                assert!(
                    !t.contains('\u{FFFD}'),
                    "half a character was streamed: {t:?}"
                );
                text.push_str(t);
            }
        }
        assert_eq!(
            text,
            whole["choices"][0]["message"]["content"].as_str().unwrap()
        );
        let last_choice = &chunks[chunks.len() - 2];
        assert_eq!(
            last_choice["choices"][0]["finish_reason"],
            whole["choices"][0]["finish_reason"]
        );
        let usage_chunk = chunks.last().unwrap();
        assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
        // Same usage, except that the second request's prompt came from the prefix cache.
        let (mut streamed_usage, mut whole_usage) =
            (usage_chunk["usage"].clone(), whole["usage"].clone());
        assert_eq!(whole_usage["prompt_tokens_details"]["cached_tokens"], 0);
        let prompt = whole_usage["prompt_tokens"].as_u64().unwrap();
        assert_eq!(
            streamed_usage["prompt_tokens_details"]["cached_tokens"].as_u64(),
            Some(prompt - 1)
        );
        streamed_usage["prompt_tokens_details"].take();
        whole_usage["prompt_tokens_details"].take();
        assert_eq!(streamed_usage, whole_usage);
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["usage"].is_null())
        );

        // Without include_usage no chunk carries usage.
        let mut sb = body.clone();
        sb["stream"] = json!(true);
        let chunks = stream_chunks(&s, &sb).await;
        assert!(
            chunks
                .iter()
                .all(|c| c["usage"].is_null() && !c["choices"].as_array().unwrap().is_empty())
        );
    });
}

#[test]
fn seeds_n_stop_and_logprobs() {
    let s = Server::start(&[]);
    run(async {
        let base = json!({"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
                          "max_tokens": 24, "temperature": 1.0, "top_p": 0.95, "top_k": 40, "min_p": 0.01,
                          "frequency_penalty": 0.2, "presence_penalty": 0.1, "repetition_penalty": 1.1});
        let text = |v: &Value, i: usize| {
            v["choices"][i]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let mut a = base.clone();
        a["seed"] = json!(1234);
        let (_, v1) = post(&s, &a.clone()).await;
        let (_, v2) = post(&s, &a.clone()).await;
        assert_eq!(
            text(&v1, 0),
            text(&v2, 0),
            "same seed, same request must give the same tokens"
        );
        let mut b = base.clone();
        b["seed"] = json!(99);
        let (_, v3) = post(&s, &b).await;
        assert_ne!(text(&v1, 0), text(&v3, 0));

        // n > 1: distinct choices with their own indices, usage summed.
        a["n"] = json!(3);
        let (status, v) = post(&s, &a.clone()).await;
        assert_eq!(status, 200, "{v}");
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
        }
        assert_ne!(text(&v, 0), text(&v, 1));
        assert_eq!(
            text(&v, 0),
            text(&v1, 0),
            "choice 0 of a seeded request is the seeded answer"
        );
        // n streamed: every index appears and finishes.
        a["stream"] = json!(true);
        let chunks = stream_chunks(&s, &a).await;
        for i in 0..3 {
            assert!(
                chunks.iter().any(|c| c["choices"][0]["index"] == i
                    && !c["choices"][0]["finish_reason"].is_null())
            );
        }

        // Stop: cut a greedy answer at a piece of its second half; the stop text is excluded.
        let greedy =
            json!({"model": MODEL, "messages": colors(), "temperature": 0, "max_tokens": 40});
        let (_, g) = post(&s, &greedy.clone()).await;
        let full = text(&g, 0);
        let stop: String = full
            .chars()
            .skip(full.chars().count() / 2)
            .take(4)
            .collect();
        let at = full.find(&stop).unwrap();
        let mut st = greedy.clone();
        st["stop"] = json!([stop, "zzzz"]);
        let (_, v) = post(&s, &st.clone()).await;
        assert_eq!(text(&v, 0), full[..at]);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        st["stream"] = json!(true);
        let chunks = stream_chunks(&s, &st).await;
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(streamed, full[..at]);

        // Logprobs: one entry per token, top alternatives sorted, chosen token among them.
        let mut lp = greedy.clone();
        lp["logprobs"] = json!(true);
        lp["top_logprobs"] = json!(3);
        lp["max_tokens"] = json!(5);
        let (_, v) = post(&s, &lp).await;
        let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), 5);
        for e in content {
            let tops = e["top_logprobs"].as_array().unwrap();
            assert_eq!(tops.len(), 3);
            assert!(e["logprob"].as_f64().unwrap() <= 0.0);
            // Greedy: the chosen token is the most likely one.
            assert_eq!(tops[0]["token"], e["token"]);
            assert!(tops[0]["logprob"].as_f64() >= tops[1]["logprob"].as_f64());
        }
        let joined: String = content
            .iter()
            .map(|e| e["token"].as_str().unwrap())
            .collect();
        assert_eq!(joined, text(&v, 0));
    });
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let s = Server::start(&[]);
    run(async {
        let client = reqwest::Client::new();
        let raw = |body: String| {
            let client = client.clone();
            let url = s.url("/v1/chat/completions");
            async move {
                let r = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                (status, v)
            }
        };
        let check = |(status, v): (u16, Value), want: u16, param: Option<&str>| {
            assert_eq!(status, want, "{v}");
            let e = &v["error"];
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
            assert!(e["type"].is_string());
            if let Some(p) = param {
                assert_eq!(e["param"], p, "{v}");
            }
        };
        let msgs = json!([{"role": "user", "content": "hi"}]);
        check(raw("{not json".into()).await, 400, None);
        // A lone surrogate is not text: JSON's parser refuses it before anything else.
        let lone = format!(
            r#"{{"model": "{MODEL}", "messages": [{{"role": "user", "content": "a\ud800b"}}]}}"#
        );
        check(raw(lone).await, 400, None);
        check(
            raw(json!({"model": MODEL, "messages": msgs, "temperature": "hot"}).to_string()).await,
            400,
            Some("temperature"),
        );
        check(
            raw(json!({"model": MODEL, "messages": "hello"}).to_string()).await,
            400,
            Some("messages"),
        );
        check(
            raw(json!({"model": MODEL}).to_string()).await,
            400,
            Some("messages"),
        );
        check(
            raw(json!({"messages": msgs}).to_string()).await,
            400,
            Some("model"),
        );
        check(
            raw(json!({"model": "nobody/nothing", "messages": msgs}).to_string()).await,
            404,
            Some("model"),
        );
        check(
            raw(json!({"model": MODEL, "messages": msgs, "temperature": 3}).to_string()).await,
            400,
            Some("temperature"),
        );
        check(
            raw(json!({"model": MODEL, "messages": msgs, "n": 100}).to_string()).await,
            400,
            Some("n"),
        );
        check(
            raw(
                json!({"model": MODEL, "messages": msgs, "stop": ["a", "b", "c", "d", "e"]})
                    .to_string(),
            )
            .await,
            400,
            Some("stop"),
        );
        check(
            raw(json!({"model": MODEL, "messages": msgs, "max_tokens": 0}).to_string()).await,
            400,
            Some("max_tokens"),
        );
        check(
            raw(json!({"model": MODEL, "messages": msgs, "max_tokens": 9000}).to_string()).await,
            400,
            Some("max_tokens"),
        );
        check(
            raw(json!({"model": MODEL, "messages": msgs, "top_logprobs": 3}).to_string()).await,
            400,
            Some("top_logprobs"),
        );
        check(
            raw(
                json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]})
                    .to_string(),
            )
            .await,
            400,
            Some("messages[0].role"),
        );
        // Constraints that cannot be honoured, and fields the server does not take, are
        // refused by name rather than ignored; so is an effort for a model that does not
        // reason.
        for (field, value) in [
            ("guided_json", json!(3)),
            ("guided_choice", json!([])),
            ("json_schema", json!("not json")),
            ("guided_regex", json!("(unclosed")),
            (
                "response_format",
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}),
            ),
            ("grammar", json!("root ::= \"yes\"")),
            ("functions", json!([{"name": "f", "parameters": {}}])),
            ("function_call", json!("auto")),
            ("reasoning_effort", json!("low")),
        ] {
            let body = json!({"model": MODEL, "messages": msgs, field: value});
            check(raw(body.to_string()).await, 400, Some(field));
        }
        // A prompt longer than the context window.
        let long = "hello ".repeat(9000);
        let (status, v) = raw(
            json!({"model": MODEL, "messages": [{"role": "user", "content": long}]}).to_string(),
        )
        .await;
        check((status, v.clone()), 400, Some("messages"));
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        // An oversized body.
        let huge = "x".repeat(5 * 1024 * 1024);
        check(
            raw(
                json!({"model": MODEL, "messages": [{"role": "user", "content": huge}]})
                    .to_string(),
            )
            .await,
            413,
            None,
        );
        // Still serving.
        let (status, _) = post(
            &s,
            &json!({"model": MODEL, "messages": msgs, "max_tokens": 2}),
        )
        .await;
        assert_eq!(status, 200);
    });
}

#[test]
fn client_disconnect_stops_generation() {
    let s = Server::start(&[]);
    run(async {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay about the sea."}],
                          "max_tokens": 4000, "stream": true, "temperature": 1.0, "seed": 3,
                          "logit_bias": {"2": -100}});
        let r = reqwest::Client::new()
            .post(s.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let mut bytes = r.bytes_stream();
        // Read a few chunks so generation is under way, then hang up.
        for _ in 0..3 {
            bytes.next().await.unwrap().unwrap();
        }
        let running = || async {
            let v: Value = reqwest::get(s.url("/health"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["models"][0]["running"].as_u64().unwrap()
        };
        assert_eq!(running().await, 1);
        drop(bytes);
        let t = Instant::now();
        while running().await != 0 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "generation went on after the client left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn config_file_local_path_and_template_override() {
    let dir = tokenfab_testkit::temp_dir("cfg-test");
    let spec: tokenfab_models::ModelSpec = MODEL.parse().unwrap();
    let gguf = spec
        .resolve(&tokenfab_models::default_cache_dir(), false)
        .unwrap()
        .path;
    // A template that prints only the contents: "hi\n" is 2 tokens in SmolLM2's vocabulary.
    std::fs::write(
        dir.join("plain.jinja"),
        "{% for m in messages %}{{ m.content }}\n{% endfor %}",
    )
    .unwrap();
    let config = dir.join("tokenfab.toml");
    std::fs::write(
        &config,
        format!(
            "max_output_tokens = 3\n[[models]]\nid = \"local/smol\"\nsource = {:?}\nchat_template_file = \"plain.jinja\"\ncontext_length = 512\n",
            gguf.display().to_string()
        ),
    )
    .unwrap();
    let s = Server::start(&["--config", config.to_str().unwrap()]);
    run(async {
        let v: Value = reqwest::get(s.url("/v1/models"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"][0]["id"], "local/smol");
        let (status, v) = post(
            &s,
            &json!({"model": "local/smol", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["usage"]["prompt_tokens"], 2,
            "the configured template was not used: {v}"
        );
        assert!(
            v["usage"]["completion_tokens"].as_u64().unwrap() <= 3,
            "max_output_tokens ignored: {v}"
        );
        // The operator's output ceiling applies before the context check: asking for more
        // than the context is served up to the ceiling.
        // (Greedy: a sampled answer could end at its end-of-turn within 3 tokens.)
        let (status, v) = post(&s, &json!({"model": "local/smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 600, "temperature": 0})).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        // The configured context cap (512) is enforced.
        let long = "hello ".repeat(600);
        let (status, v) = post(
            &s,
            &json!({"model": "local/smol", "messages": [{"role": "user", "content": long}]}),
        )
        .await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["error"]["code"], "context_length_exceeded");
    });
}

#[test]
fn second_turn_recomputes_only_the_new_tokens() {
    let s = Server::start(&[]);
    run(async {
        let round1 =
            json!({"model": MODEL, "messages": colors(), "temperature": 0, "max_tokens": 64});
        let (_, v1) = post(&s, &round1).await;
        assert_eq!(v1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let p1 = v1["usage"]["prompt_tokens"].as_u64().unwrap();
        let answer = v1["choices"][0]["message"]["content"].as_str().unwrap();
        // The seed's Round 2: the answer goes back as an assistant turn, then "继续".
        let mut messages = colors();
        messages.as_array_mut().unwrap().extend([
            json!({"role": "assistant", "content": answer}),
            json!({"role": "user", "content": "继续"}),
        ]);
        let (status, v2) = post(
            &s,
            &json!({"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": 8}),
        )
        .await;
        assert_eq!(status, 200, "{v2}");
        let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        let p2 = v2["usage"]["prompt_tokens"].as_u64().unwrap();
        // The whole first prompt and the answer's tokens come from the cache; only the end
        // of the answer turn and the new user turn are computed.
        assert!(
            cached > p1 && cached < p2,
            "cached {cached}, round 1 prompt {p1}, round 2 prompt {p2}"
        );
        // The same request again: everything but the last prompt token is cached, and the
        // greedy answer is the same.
        let (_, again) = post(&s, &round1).await;
        assert_eq!(
            again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
            Some(p1 - 1)
        );
        assert_eq!(
            again["choices"][0]["message"]["content"],
            v1["choices"][0]["message"]["content"]
        );
    });
}

#[test]
fn requests_arriving_together_compute_a_shared_prompt_once() {
    let s = Server::start(&[]);
    run(async {
        // Four copies of one conversation at once: the first computes the prompt, the
        // others wait a step and take its full blocks from the prefix cache. Their answers
        // are the same as computing it themselves (greedy, batch-invariant arithmetic).
        let req = json!({"model": MODEL, "messages": colors(), "temperature": 0, "max_tokens": 16});
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (url, req) = (s.url("/v1/chat/completions"), req.clone());
                tokio::spawn(async move {
                    let r = reqwest::Client::new()
                        .post(url)
                        .json(&req)
                        .send()
                        .await
                        .unwrap();
                    r.json::<Value>().await.unwrap()
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let prompt = answers[0]["usage"]["prompt_tokens"].as_u64().unwrap();
        assert!(prompt > 16, "the prompt fills a block: {prompt}");
        let cached: Vec<u64> = answers
            .iter()
            .map(|a| {
                a["usage"]["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(cached.iter().filter(|&&c| c == 0).count(), 1, "{cached:?}");
        assert!(
            cached.iter().filter(|&&c| c >= 16).count() == 3,
            "{cached:?}"
        );
        let text = |a: &Value| a["choices"][0]["message"]["content"].clone();
        assert!(answers.iter().all(|a| text(a) == text(&answers[0])));
    });
}

/// A token that is one byte of a multi-byte character, forced at every step by
/// `logit_bias`: the bytes never make a character. Each that a following byte proves
/// invalid is one U+FFFD; the last, cut by `max_tokens`, is half a character and is
/// dropped (as vLLM's incremental detokenizer drops it); streamed and whole agree.
#[test]
fn bytes_that_never_make_a_character_arrive_as_replacement_characters_or_not_at_all() {
    let g = tokenfab_engine::gguf::GgufFile::open(common::cached(MODEL)).unwrap();
    let tok = tokenfab_engine::tokenizer::Tokenizer::from_gguf(&g).unwrap();
    // GPT-2's byte-level alphabet writes byte 0xE4 (a UTF-8 lead byte) as `ä`.
    let lead = (0..tok.vocab_size() as u32)
        .find(|&i| tok.token_text(i) == Some("\u{e4}"))
        .expect("the byte token 0xE4");
    let s = Server::start(&[]);
    run(async {
        let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                          "max_tokens": 6, "temperature": 0,
                          "logit_bias": {lead.to_string(): 100}});
        let (status, r) = post(&s, &body).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["usage"]["completion_tokens"], 6, "{r}");
        assert_eq!(
            r["choices"][0]["message"]["content"],
            "\u{fffd}".repeat(5),
            "{r}"
        );
        let streamed = common::streamed_content(&stream_chunks(&s, &body).await);
        assert_eq!(streamed, "\u{fffd}".repeat(5));
    });
}
