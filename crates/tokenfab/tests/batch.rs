//! The batch API on the real binary and the real model: files and batches in OpenAI's
//! shapes, each line answered as the same request is answered interactively, bad lines in
//! the error file with the batch completed, cancellation, expiry, the batch discount
//! charged exactly, accounts kept apart, a batch resumed after SIGKILL without a line run
//! twice or charged twice, and the official `openai` client's batch calls.
//! Model-heavy: `cargo test --release -p tokenfab --test batch -- --test-threads=1`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{MODEL, Server, account, micros, run, run_returning, run_seed};
use serde_json::{Value, json};
use tokenfab_testkit::{TempPath, temp_db, temp_path, unique};

const ADMIN: &str = "test-admin-key-0123456789";

/// A config serving the default model free (`test/free`) and paid with a batch discount of
/// one half (`test/paid`: 1000 and 2000 micro-units per prompt and generated token, 500
/// and 1000 in a batch), with `extra` top-level keys.
fn config(extra: &str) -> TempPath {
    let path = temp_path("config", "toml");
    std::fs::write(
        &path,
        format!(
            r#"{extra}

[[models]]
id = "test/free"
source = "{MODEL}"

[[models]]
id = "test/paid"
source = "{MODEL}"
input_per_million = "1000"
output_per_million = "2000"
batch_discount = "0.5"
"#
        ),
    )
    .unwrap();
    path
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn with_key(r: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(k) => r.bearer_auth(k),
        None => r,
    }
}

/// Uploads `lines` (one JSON line each, as given) as a batch file; returns its object.
async fn upload(s: &Server, key: Option<&str>, lines: &[String]) -> Value {
    let boundary = "tokenfab-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    );
    for l in lines {
        body.push_str(l);
        body.push('\n');
    }
    body.push_str(&format!("\r\n--{boundary}--\r\n"));
    let r = with_key(client().post(s.url("/v1/files")), key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn create(s: &Server, key: Option<&str>, body: Value) -> (u16, Value) {
    let r = with_key(client().post(s.url("/v1/batches")), key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn get(s: &Server, key: Option<&str>, path: &str) -> (u16, Value) {
    let r = with_key(client().get(s.url(path)), key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Waits for a batch to end; returns it.
async fn finished(s: &Server, key: Option<&str>, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (status, b) = get(s, key, &format!("/v1/batches/{id}")).await;
        assert_eq!(status, 200, "{b}");
        if ["completed", "failed", "expired", "cancelled"].contains(&b["status"].as_str().unwrap())
        {
            return b;
        }
        assert!(Instant::now() < deadline, "the batch did not end: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A file's lines, parsed; none for a batch without that file.
async fn lines(s: &Server, key: Option<&str>, file: &Value) -> Vec<Value> {
    let Some(id) = file.as_str() else {
        return Vec::new();
    };
    let r = with_key(client().get(s.url(&format!("/v1/files/{id}/content"))), key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn chat(model: &str, question: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

fn line(custom_id: &str, body: Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

fn batch_of(file: &Value, window: &str) -> Value {
    json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": window})
}

const QUESTIONS: [&str; 3] = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
];

#[test]
fn a_batch_answers_as_the_api_does_and_puts_bad_lines_in_its_error_file() {
    let cfg = config("");
    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    run(async {
        let mut input: Vec<String> = QUESTIONS
            .iter()
            .enumerate()
            .map(|(i, q)| line(&format!("q{i}"), chat("test/free", q, 24)))
            .collect();
        input.push("{not json".into());
        input.push(line("unknown", chat("no/such-model", "hi", 4)));
        input.push(line("q0", chat("test/free", "again", 4)));
        input.push(
            json!({"custom_id": "url", "method": "POST", "url": "/v1/embeddings", "body": {}})
                .to_string(),
        );
        let file = upload(&s, None, &input).await;
        assert_eq!(file["object"], "file");
        assert_eq!(file["purpose"], "batch");
        let (status, again) = get(
            &s,
            None,
            &format!("/v1/files/{}", file["id"].as_str().unwrap()),
        )
        .await;
        assert_eq!((status, &again), (200, &file));
        let (status, b) = create(&s, None, batch_of(&file, "24h")).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(
            (b["object"].as_str(), b["status"].as_str()),
            (Some("batch"), Some("validating"))
        );
        let id = b["id"].as_str().unwrap().to_owned();
        assert!(id.starts_with("batch_"));
        let b = finished(&s, None, &id).await;
        assert_eq!(b["status"], "completed", "{b}");
        assert_eq!(
            b["request_counts"],
            json!({"total": 7, "completed": 3, "failed": 4})
        );
        for at in [
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "expires_at",
        ] {
            assert!(b[at].as_u64().is_some(), "{at}: {b}");
        }
        // Each answer is the interactive one, token for token.
        let out = lines(&s, None, &b["output_file_id"]).await;
        assert_eq!(out.len(), 3);
        for o in &out {
            let i: usize = o["custom_id"].as_str().unwrap()[1..].parse().unwrap();
            assert!(o["id"].as_str().unwrap().starts_with("batch_req_"));
            assert_eq!(o["error"], Value::Null);
            assert_eq!(o["response"]["status_code"], 200);
            let (status, plain) = common::post(&s, &chat("test/free", QUESTIONS[i], 24)).await;
            assert_eq!(status, 200);
            let body = &o["response"]["body"];
            assert_eq!(body["object"], "chat.completion");
            assert_eq!(
                body["choices"][0]["message"],
                plain["choices"][0]["message"]
            );
            assert_eq!(
                body["usage"]["completion_tokens"],
                plain["usage"]["completion_tokens"]
            );
        }
        let errors = lines(&s, None, &b["error_file_id"]).await;
        let codes: HashMap<String, (Value, Value)> = errors
            .iter()
            .map(|e| {
                let status = e["response"]["status_code"].clone();
                (
                    e["error"]["code"].as_str().unwrap().to_owned(),
                    (e["custom_id"].clone(), status),
                )
            })
            .collect();
        assert_eq!(
            codes,
            HashMap::from([
                ("invalid_json_line".into(), (Value::Null, Value::Null)),
                ("model_not_found".into(), (json!("unknown"), json!(404))),
                ("duplicate_custom_id".into(), (json!("q0"), Value::Null)),
                ("mismatched_endpoint".into(), (json!("url"), Value::Null)),
            ])
        );
        // A second batch, and the list's pages: newest first.
        let (_, second) = create(&s, None, batch_of(&file, "1h")).await;
        let (_, page) = get(&s, None, "/v1/batches?limit=1").await;
        assert_eq!(page["data"][0]["id"], second["id"]);
        assert_eq!(
            (page["has_more"].as_bool(), &page["first_id"]),
            (Some(true), &second["id"])
        );
        let (_, rest) = get(
            &s,
            None,
            &format!(
                "/v1/batches?limit=5&after={}",
                second["id"].as_str().unwrap()
            ),
        )
        .await;
        assert_eq!(rest["data"].as_array().unwrap().len(), 1);
        assert_eq!(
            (rest["data"][0]["id"].as_str(), rest["has_more"].as_bool()),
            (Some(id.as_str()), Some(false))
        );
        // Whole-batch mistakes are 400s at once.
        for (bad, param) in [
            (
                json!({"input_file_id": "file-none", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
                "input_file_id",
            ),
            (
                json!({"input_file_id": file["id"], "endpoint": "/v1/rerank", "completion_window": "24h"}),
                "endpoint",
            ),
            (
                json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "2d"}),
                "completion_window",
            ),
        ] {
            let (status, e) = create(&s, None, bad).await;
            assert_eq!(
                (status, e["error"]["param"].as_str()),
                (400, Some(param)),
                "{e}"
            );
        }
        let (status, e) = get(&s, None, "/v1/batches/batch_nope").await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (404, Some("not_found"))
        );
    });
}

#[test]
fn a_batch_is_cancelled_and_another_expires_with_its_unrun_lines_in_the_error_file() {
    let cfg = config("batch_concurrency = 1\nbatch_second_windows = true");
    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    run(async {
        let input: Vec<String> = (0..20)
            .map(|i| {
                line(
                    &format!("r{i}"),
                    chat(
                        "test/free",
                        &format!("Tell me a long story number {i}."),
                        64,
                    ),
                )
            })
            .collect();
        let file = upload(&s, None, &input).await;
        // Cancelled at once: what ran is in the output, the rest are `batch_cancelled`.
        let (_, b) = create(&s, None, batch_of(&file, "24h")).await;
        let id = b["id"].as_str().unwrap();
        let r = client()
            .post(s.url(&format!("/v1/batches/{id}/cancel")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let c: Value = r.json().await.unwrap();
        assert!(
            ["cancelling", "cancelled"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        let b = finished(&s, None, id).await;
        assert_eq!(b["status"], "cancelled", "{b}");
        assert!(
            b["cancelling_at"].is_u64() && b["cancelled_at"].is_u64(),
            "{b}"
        );
        let (out, err) = (
            lines(&s, None, &b["output_file_id"]).await,
            lines(&s, None, &b["error_file_id"]).await,
        );
        assert_eq!(out.len() + err.len(), 20);
        assert!(
            err.len() >= 18,
            "cancelled at once, at most a line or two ran: {b}"
        );
        assert!(err.iter().all(|e| e["error"]["code"] == "batch_cancelled"));
        let counts = &b["request_counts"];
        assert_eq!(
            (counts["completed"].as_u64(), counts["failed"].as_u64()),
            (Some(out.len() as u64), Some(err.len() as u64))
        );

        // A window of two seconds: one line at a time cannot run twenty.
        let (_, b) = create(&s, None, batch_of(&file, "2s")).await;
        let b = finished(&s, None, b["id"].as_str().unwrap()).await;
        assert_eq!(b["status"], "expired", "{b}");
        assert!(b["expired_at"].is_u64());
        let (out, err) = (
            lines(&s, None, &b["output_file_id"]).await,
            lines(&s, None, &b["error_file_id"]).await,
        );
        assert_eq!(out.len() + err.len(), 20);
        assert!(
            !err.is_empty() && err.iter().all(|e| e["error"]["code"] == "batch_expired"),
            "{b}"
        );
        assert!(out.iter().all(|o| o["response"]["status_code"] == 200));
    });
}

/// What a batch line costs at the batch price: half of 1000 and 2000 micro-units.
fn batch_cost(usage: &Value) -> i64 {
    usage["prompt_tokens"].as_i64().unwrap() * 500
        + usage["completion_tokens"].as_i64().unwrap() * 1000
}

async fn balance(s: &Server, name: &str) -> (i64, i64) {
    let r = client()
        .get(s.url(&format!("/admin/accounts/{name}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let a: Value = r.json().await.unwrap();
    (micros(&a["balance"]), micros(&a["reserved"]))
}

#[test]
fn a_paid_batch_survives_sigkill_charged_once_at_its_discount_and_private_to_its_account() {
    let db = temp_db("batch-kill");
    let url = db.sqlite_url();
    let name = unique("batch");
    let key = account(&url, &name, "10.00");
    let other = account(&url, &unique("other"), "1.00");
    let cfg = config("batch_concurrency = 2");
    let args = [
        "--database",
        url.as_str(),
        "--config",
        cfg.to_str().unwrap(),
        "--admin-key",
        ADMIN,
        "--instance",
        "batch-test",
    ];
    let n = 16;
    let s = Server::start(&args);
    let port = s.port();
    let id = run_returning(async {
        let input: Vec<String> = (0..n)
            .map(|i| {
                line(
                    &format!("r{i}"),
                    chat(
                        "test/paid",
                        &format!("Write a short poem about the number {i}."),
                        48,
                    ),
                )
            })
            .collect();
        let file = upload(&s, Some(&key), &input).await;
        let fid = file["id"].as_str().unwrap();
        // Another account sees neither the file nor the batch, nor can it use the file.
        let (status, _) = get(&s, Some(&other), &format!("/v1/files/{fid}")).await;
        assert_eq!(status, 404);
        let (status, _) = create(&s, Some(&other), batch_of(&file, "24h")).await;
        assert_eq!(status, 400);
        let (status, b) = create(&s, Some(&key), batch_of(&file, "24h")).await;
        assert_eq!(status, 200, "{b}");
        let id = b["id"].as_str().unwrap().to_owned();
        let (status, _) = get(&s, Some(&other), &format!("/v1/batches/{id}")).await;
        assert_eq!(status, 404);
        let (_, listed) = get(&s, Some(&other), "/v1/batches").await;
        assert_eq!(listed["data"], json!([]));
        // Killed once some lines are done and others are running.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, b) = get(&s, Some(&key), &format!("/v1/batches/{id}")).await;
            let done = b["request_counts"]["completed"].as_u64().unwrap();
            if done >= 3 {
                assert!(done < n as u64 - 2, "the kill comes mid-batch: {b}");
                break;
            }
            assert!(Instant::now() < deadline, "{b}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        id
    });
    s.kill();
    let s = Server::start_on(port, &args);
    run(async {
        let b = finished(&s, Some(&key), &id).await;
        assert_eq!(b["status"], "completed", "{b}");
        assert_eq!(
            b["request_counts"],
            json!({"total": n, "completed": n, "failed": 0})
        );
        let out = lines(&s, Some(&key), &b["output_file_id"]).await;
        let mut ids: Vec<&str> = out
            .iter()
            .map(|o| o["custom_id"].as_str().unwrap())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "every line has exactly one answer");
        let expected: i64 = out
            .iter()
            .map(|o| batch_cost(&o["response"]["body"]["usage"]))
            .sum();
        let (bal, held) = balance(&s, &name).await;
        assert_eq!(held, 0, "no hold is left");
        assert_eq!(
            10_000_000 - bal,
            expected,
            "charged once per answer, at half price"
        );
        // One usage row per line: none interrupted, none twice.
        let r = client()
            .get(s.url("/admin/usage"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        let usage: Value = r.json().await.unwrap();
        let row = usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["account"] == name)
            .cloned()
            .unwrap();
        assert_eq!(
            (row["requests"].as_u64(), micros(&row["cost"])),
            (Some(n as u64), expected),
            "{row}"
        );
    });
}

#[test]
fn the_openai_client_runs_a_batch() {
    let s = Server::start(&[]);
    let v = run_seed(&s, "batch.py", MODEL);
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["counts"], json!([2, 2, 0]));
    assert_eq!(v["metadata"], json!({"job": "sdk"}));
    assert_eq!(v["listed"][0], v["id"]);
    assert_eq!(v["answers"]["q0"], v["plain"], "{v}");
}
