//! The ledger as tests check it: a server of a paid and a free model on a given ledger
//! with the admin API, requests with a key, balances and what answers cost. Shared by the
//! platform's tests and the fault-injection tests, which hold the ledger to the same
//! exactness.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokenfab_testkit::{TempPath, temp_path};

use super::{Server, micros};

pub const ADMIN: &str = "test-admin-key-0123456789";
/// 1000 per million prompt tokens and 2000 per million generated ones: 1000 and 2000
/// micro-units per token.
pub const IN: i64 = 1000;
pub const OUT: i64 = 2000;

/// A config file serving `test/paid` (priced [`IN`] and [`OUT`]) and `test/free` (3
/// requests a minute) on the default model, then `extra` TOML.
pub fn config(extra: &str) -> TempPath {
    let path = temp_path("config", "toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[models]]
id = "test/paid"
source = "{model}"
input_per_million = "1000"
output_per_million = 2000

[[models]]
id = "test/free"
source = "{model}"
[models.limits.default]
rpm = 3
{extra}
"#,
            model = super::MODEL
        ),
    )
    .unwrap();
    path
}

/// A server of the paid and free test models on the ledger at `db`, with the admin API
/// and `extra` flags.
pub fn serve(db: &str, config: &std::path::Path, extra: &[&str]) -> Server {
    Server::start(&args(db, config, extra))
}

/// The flags of [`serve`].
pub fn args<'a>(db: &'a str, config: &'a std::path::Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--database",
        db,
        "--config",
        config.to_str().unwrap(),
        "--admin-key",
        ADMIN,
    ];
    args.extend_from_slice(extra);
    args
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub async fn chat(s: &Server, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut r = client().post(s.url("/v1/chat/completions")).json(&body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap()
}

pub fn body(model: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// A request the default model answers at length: greedy, it runs to `max_tokens` (up
/// to about 400), which takes seconds, so that faults can strike while it runs.
pub fn long_body(model: &str, max_tokens: u32) -> Value {
    let mut b = body(model, max_tokens);
    b["messages"][0]["content"] =
        json!("Write a long story about a dragon who learns to count, with many chapters.");
    b
}

pub async fn admin_get(s: &Server, path: &str) -> Value {
    let r = client()
        .get(s.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// (balance, reserved) of an account, in micro-units.
pub async fn balance(s: &Server, name: &str) -> (i64, i64) {
    let a = admin_get(s, &format!("/admin/accounts/{name}")).await;
    (micros(&a["balance"]), micros(&a["reserved"]))
}

/// What an answer with this `usage` costs on `test/paid`, in micro-units.
pub fn cost(usage: &Value) -> i64 {
    usage["prompt_tokens"].as_i64().unwrap() * IN
        + usage["completion_tokens"].as_i64().unwrap() * OUT
}

/// Waits until nothing is reserved on the account any more.
pub async fn settled(s: &Server, name: &str) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = balance(s, name).await;
        if b.1 == 0 || Instant::now() > deadline {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The usage chunk of a streamed answer.
pub fn stream_usage(text: &str) -> Value {
    super::sse_events(text)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .find(|c| c["usage"].is_object())
        .expect("a usage chunk")["usage"]
        .clone()
}

/// The PostgreSQL and Redis URLs of scripts/services.sh.
pub fn services() -> (String, String) {
    let pg = std::env::var("TOKENFAB_TEST_PG")
        .expect("TOKENFAB_TEST_PG is not set: run scripts/test.sh, which starts PostgreSQL");
    let redis = std::env::var("TOKENFAB_TEST_REDIS")
        .expect("TOKENFAB_TEST_REDIS is not set: run scripts/test.sh, which starts Redis");
    (pg, redis)
}

/// Opens an account with `amount` through the admin API; returns a key for it.
pub async fn open_account(s: &Server, name: &str, amount: &str) -> String {
    admin_post(s, "/admin/accounts", json!({"name": name})).await;
    let credit = format!("/admin/accounts/{name}/credit");
    admin_post(s, &credit, json!({"amount": amount})).await;
    let k = admin_post(s, "/admin/keys", json!({"account": name})).await;
    k["key"].as_str().unwrap().to_owned()
}

/// POSTs `body` to an admin route with [`ADMIN`]; the answer must be a success.
pub async fn admin_post(s: &Server, path: &str, body: Value) -> Value {
    let r = client()
        .post(s.url(path))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Waits until the account holds exactly `amount` (micro-units): the requests that hold
/// it are admitted and none has settled.
pub async fn held(s: &Server, name: &str, amount: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, reserved) = balance(s, name).await;
        if reserved == amount {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} holds {reserved}, not {amount}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A paid request as its client saw it.
#[derive(Debug)]
pub struct Seen {
    pub status: u16,
    /// The answer's cost from its own usage; 0 for anything but a complete answer.
    pub cost: i64,
    /// The OpenAI error's code, for an error.
    pub code: Option<String>,
}

/// Sends `body` to `url` with `key`, streamed or not, and reads the whole answer. A 200
/// must be complete: a stream ends with its usage and `[DONE]`, a whole answer has its
/// usage and finish reasons; any other status, an OpenAI-shaped error. Waits a minute at
/// most: far above anything here takes on a loaded machine.
pub async fn send(url: String, key: String, mut body: Value, streamed: bool) -> Seen {
    if streamed {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    let r = client()
        .post(url)
        .bearer_auth(key)
        .timeout(Duration::from_secs(60))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    if status != 200 {
        let e: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(e["error"]["message"].is_string(), "{status}: {e}");
        let code = e["error"]["code"].as_str().map(str::to_owned);
        return Seen {
            status,
            cost: 0,
            code,
        };
    }
    let cost = if streamed {
        let events = super::sse_events(&text);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
        cost(&stream_usage(&text))
    } else {
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["choices"][0]["finish_reason"].is_string(), "{v}");
        cost(&v["usage"])
    };
    Seen {
        status,
        cost,
        code: None,
    }
}
