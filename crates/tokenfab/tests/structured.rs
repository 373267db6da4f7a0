//! Structured outputs over HTTP on the real default model: the official `openai` client's
//! `parse` and `stream` helpers with a Pydantic model, and every dialect's field (OpenAI's
//! `response_format`, vLLM's `guided_*` and `structured_outputs`, llama.cpp's `json_schema`)
//! on chat and completions, streamed answers equal to whole ones.

mod common;

use common::{MODEL, Server, post, run, run_seed, sse_events};
use serde_json::{Value, json};

#[test]
fn the_openai_client_parses_pydantic_models_streamed_and_not() {
    let s = Server::start(&[]);
    let v = run_seed(&s, "structured.py", MODEL);
    assert_eq!(v["parsed"], v["total"], "{v}");
    assert!(v["total"].as_u64().unwrap() >= 8);
    assert_eq!(v["streamed"], true, "{v}");
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Describe a city you like."}],
        "max_tokens": 120,
        "temperature": 0.9,
        "seed": 3,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// The answer of a whole chat completion, after checking it ended on its own.
fn content(v: &Value) -> String {
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn every_dialect_constrains_chat_and_completions() {
    let s = Server::start(&[]);
    run(async {
        let schema = json!({
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "rating": {"type": "integer", "minimum": 1, "maximum": 5}
            },
            "required": ["city", "rating"],
            "additionalProperties": false
        });
        let check = |answer: &str| {
            let v: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
            assert!(
                v["city"].as_str().is_some_and(|c| c.chars().count() <= 30),
                "{answer}"
            );
            assert!((1..=5).contains(&v["rating"].as_i64().unwrap()), "{answer}");
            assert_eq!(v.as_object().unwrap().len(), 2, "{answer}");
        };
        for field in [
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": true}}}),
            json!({"guided_json": schema}),
            json!({"structured_outputs": {"json": schema}}),
            json!({"json_schema": schema}),
        ] {
            let (status, v) = post(&s, &chat(field.clone())).await;
            assert_eq!(status, 200, "{field}: {v}");
            check(&content(&v));
        }
        // `json_object`: an object, whatever its keys (which a small model may write at
        // any length: cut by `max_tokens`, it is still the start of an object).
        let mut body = chat(json!({"response_format": {"type": "json_object"}}));
        body["messages"][0]["content"] = json!("Reply in JSON: a city and its country.");
        let (_, v) = post(&s, &body).await;
        let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
        if v["choices"][0]["finish_reason"] == "stop" {
            assert!(
                serde_json::from_str::<Value>(answer).unwrap().is_object(),
                "{answer}"
            );
        } else {
            assert!(answer.starts_with('{'), "{answer}");
        }
        let (_, v) = post(
            &s,
            &chat(json!({"guided_choice": ["Paris", "Rome", "Kyoto"]})),
        )
        .await;
        assert!(
            ["Paris", "Rome", "Kyoto"].contains(&content(&v).as_str()),
            "{v}"
        );
        let (_, v) = post(
            &s,
            &chat(json!({"guided_regex": "[A-Z][a-z]{2,12}, [A-Z]{2}"})),
        )
        .await;
        let answer = content(&v);
        let (city, code) = answer.split_once(", ").unwrap();
        assert!(
            city.chars().all(char::is_alphabetic) && code.len() == 2,
            "{answer}"
        );

        // Streamed: the deltas add up to the whole answer of the same seed.
        let body = chat(json!({"guided_json": schema}));
        let (_, whole) = post(&s, &body).await;
        let mut streamed_body = body.clone();
        streamed_body["stream"] = json!(true);
        let text = reqwest::Client::new()
            .post(s.url("/v1/chat/completions"))
            .json(&streamed_body)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let streamed: String = sse_events(&text)
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(streamed, content(&whole));

        // The legacy completions endpoint takes the same fields.
        let r = reqwest::Client::new()
            .post(s.url("/v1/completions"))
            .json(
                &json!({"model": MODEL, "prompt": "My favourite number is", "max_tokens": 8,
                "guided_regex": " [0-9]{1,3}"}),
            )
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert!(
            text.starts_with(' ') && text[1..].parse::<u32>().is_ok(),
            "{v}"
        );

        // Two constraints at once, and a schema llguidance cannot honour, are 400s that
        // name the field.
        for (extra, field) in [
            (
                json!({"guided_json": schema, "guided_regex": "a"}),
                "guided_regex",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": "three"}}}}),
                "response_format",
            ),
        ] {
            let (status, v) = post(&s, &chat(extra.clone())).await;
            assert_eq!(
                (status, v["error"]["param"].as_str()),
                (400, Some(field)),
                "{extra}: {v}"
            );
        }
    });
}
