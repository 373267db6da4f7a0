//! The platform end to end, on the real binary and the real model: keys and 401s, prices,
//! reservations and 402s, exact charges for plain, streamed and cut requests, RPM limits
//! and their headers, no overdraw under 50 concurrent requests, two replicas sharing
//! PostgreSQL and Redis, and a ledger that stays consistent through SIGKILL.
//!
//! PostgreSQL and Redis come from scripts/services.sh (TOKENFAB_TEST_PG, TOKENFAB_TEST_REDIS).

mod common;

use std::process::Command;
use std::time::Duration;

use common::ledger::{
    ADMIN, IN, OUT, admin_get, balance, body, chat, client, config, cost, long_body, send, serve,
    services, settled, stream_usage,
};
use common::{Server, account, cli, micros, run, run_returning};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokenfab_testkit::{temp_db, unique};

#[test]
fn keys_prices_balances_and_limits_on_sqlite() {
    let ledger = temp_db("ledger");
    let db = ledger.sqlite_url();
    let rich = account(&db, "rich", "10.00");
    let poor = account(&db, "poor", "0");
    let revoked = account(&db, "gone", "1.00");
    let cfg = config("");
    let s = serve(&db, &cfg, &[]);
    run(async {
        // 401: no key, an unknown key, a revoked key; on every /v1 route.
        for key in [None, Some("sk-not-a-key")] {
            let r = chat(&s, key, body("test/paid", 4)).await;
            assert_eq!(r.status(), 401);
            let e: Value = r.json().await.unwrap();
            assert_eq!(e["error"]["code"], "invalid_api_key", "{e}");
        }
        let r = client().get(s.url("/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = client()
            .get(s.url("/v1/models"))
            .bearer_auth(&rich)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // The tokenizer routes beside /v1 are behind the keys too.
        let tokenize = |key: Option<&str>| {
            let r = client()
                .post(s.url("/tokenize"))
                .json(&json!({"model": "test/paid", "prompt": "hi"}));
            match key {
                Some(k) => r.bearer_auth(k),
                None => r,
            }
            .send()
        };
        assert_eq!(tokenize(None).await.unwrap().status(), 401);
        assert_eq!(tokenize(Some(&rich)).await.unwrap().status(), 200);
        assert_eq!(
            chat(&s, Some(&revoked), body("test/paid", 2))
                .await
                .status(),
            200
        );
        let listed = cli(&db, &["keys", "list"]);
        assert!(
            listed.contains("gone") && listed.contains(&revoked[..11]),
            "{listed}"
        );
        cli(&db, &["keys", "revoke", &revoked[..11]]);
        // Revocation from the CLI bites within the key cache's two seconds.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            chat(&s, Some(&revoked), body("test/paid", 2))
                .await
                .status(),
            401
        );

        // A plain request is charged exactly prompt × 1000 + completion × 2000 micro-units.
        let (b0, _) = balance(&s, "rich").await;
        let r = chat(&s, Some(&rich), body("test/paid", 8)).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let (b1, held) = balance(&s, "rich").await;
        assert_eq!(held, 0);
        assert_eq!(b0 - b1, cost(&v["usage"]), "{}", v["usage"]);

        // Streamed: the same, counted from the usage chunk.
        let mut req = body("test/paid", 12);
        req["stream"] = json!(true);
        req["stream_options"] = json!({"include_usage": true});
        let text = chat(&s, Some(&rich), req.clone())
            .await
            .text()
            .await
            .unwrap();
        let usage = stream_usage(&text);
        let (b2, _) = balance(&s, "rich").await;
        assert_eq!(b1 - b2, cost(&usage), "{usage}");

        // Cut by the client after three chunks: billed once, for what was generated.
        req["max_tokens"] = json!(200);
        let before = admin_get(&s, "/admin/usage").await;
        let resp = chat(&s, Some(&rich), req.clone()).await;
        let mut stream = resp.bytes_stream();
        let mut seen = 0;
        while let Some(chunk) = stream.next().await {
            seen += String::from_utf8_lossy(&chunk.unwrap())
                .matches("data: ")
                .count();
            if seen >= 4 {
                break;
            }
        }
        drop(stream);
        let (b3, held) = settled(&s, "rich").await;
        assert_eq!(held, 0, "the cut request's reservation was released");
        let after = admin_get(&s, "/admin/usage").await;
        let row = |u: &Value| {
            u["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["account"] == "rich" && r["model"] == "test/paid")
                .cloned()
                .unwrap()
        };
        let (u0, u1) = (row(&before), row(&after));
        let d = |k: &str| u1[k].as_i64().unwrap() - u0[k].as_i64().unwrap();
        assert_eq!(d("requests"), 1);
        let generated = d("completion_tokens");
        assert!(
            (3..200).contains(&generated),
            "billed {generated} generated tokens"
        );
        assert_eq!(b2 - b3, d("prompt_tokens") * IN + generated * OUT);
        assert_eq!(micros(&u1["cost"]) - micros(&u0["cost"]), b2 - b3);

        // 402 on a paid model without money, and nothing changes; free models answer.
        let r = chat(&s, Some(&poor), body("test/paid", 4)).await;
        assert_eq!(r.status(), 402);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "insufficient_quota", "{e}");
        assert_eq!(e["error"]["type"], "insufficient_quota");
        assert_eq!(balance(&s, "poor").await, (0, 0));
        let r = chat(&s, Some(&poor), body("test/free", 4)).await;
        assert_eq!(r.status(), 200);
        let info: Value = client()
            .get(s.url("/v1/user/info"))
            .bearer_auth(&poor)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(info["code"], 20000);
        assert_eq!(info["data"]["name"], "poor");
        assert_eq!(info["data"]["totalBalance"], "0.00");

        // RPM 3 on the free model: headers on every answer, then 429 naming the limit.
        // (One request of `poor` above already counted.)
        for remaining in [1, 0] {
            let r = chat(&s, Some(&poor), body("test/free", 2)).await;
            assert_eq!(r.status(), 200);
            let h = r.headers();
            assert_eq!(h["x-ratelimit-limit-requests"], "3");
            assert_eq!(
                h["x-ratelimit-remaining-requests"],
                remaining.to_string().as_str()
            );
            assert!(
                h["x-ratelimit-reset-requests"]
                    .to_str()
                    .unwrap()
                    .ends_with('s')
            );
        }
        let r = chat(&s, Some(&poor), body("test/free", 2)).await;
        assert_eq!(r.status(), 429);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "rate_limit_exceeded");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("RPM"),
            "{e}"
        );
        // Limits are per account: another account still gets through.
        assert_eq!(
            chat(&s, Some(&rich), body("test/free", 2)).await.status(),
            200
        );
    });
    let usage = cli(&db, &["usage"]);
    assert!(
        usage.contains("rich") && usage.contains("test/paid"),
        "{usage}"
    );
    drop(s);
}

/// Fires `n` concurrent paid requests, every other one streamed; returns (statuses, sum of
/// the answered ones' exact costs from their usage).
async fn burst(servers: &[&Server], key: &str, n: usize, max_tokens: u32) -> (Vec<u16>, i64) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = servers[i % servers.len()].url("/v1/chat/completions");
            let streamed = i % 2 == 1;
            tokio::spawn(send(
                url,
                key.to_owned(),
                body("test/paid", max_tokens),
                streamed,
            ))
        })
        .collect();
    let mut statuses = Vec::new();
    let mut total = 0;
    for t in tasks {
        let seen = t.await.unwrap();
        statuses.push(seen.status);
        total += seen.cost;
    }
    (statuses, total)
}

#[test]
fn no_overdraw_under_50_concurrent_requests() {
    let ledger = temp_db("overdraw");
    let db = ledger.sqlite_url();
    // The most a request can cost is about 0.05: 0.20 covers four at a time.
    let key = account(&db, "small", "0.20");
    let cfg = config("");
    let s = serve(&db, &cfg, &[]);
    run(async {
        let (statuses, charged) = burst(&[&s], &key, 50, 8).await;
        let ok = statuses.iter().filter(|&&c| c == 200).count();
        let broke = statuses.iter().filter(|&&c| c == 402).count();
        assert_eq!(ok + broke, 50, "{statuses:?}");
        assert!(ok >= 1 && broke >= 1, "{statuses:?}");
        let (b, held) = settled(&s, "small").await;
        assert_eq!(held, 0);
        assert!(b >= 0, "overdrawn: {b}");
        assert_eq!(
            200_000 - b,
            charged,
            "the balance fell by exactly the answers' costs"
        );
    });
    drop(s);
}

#[test]
fn two_replicas_share_the_ledger_and_the_limits() {
    let (pg, redis) = services();
    let name = unique("replicas");
    let key = account(&pg, &name, "0.30");
    // Every model: 5 requests a minute per account, across both replicas.
    let cfg = config("[limits.default]\nrpm = 5\n");
    let (a_name, b_name) = (format!("{name}-a"), format!("{name}-b"));
    let shared = ["--redis", redis.as_str(), "--instance"];
    let a = serve(&pg, &cfg, &[&shared[..], &[a_name.as_str()]].concat());
    let b = serve(&pg, &cfg, &[&shared[..], &[b_name.as_str()]].concat());
    run(async {
        // Ten requests alternating between the replicas: exactly five pass the shared
        // RPM, each charged once in the shared ledger.
        let (b0, _) = balance(&a, &name).await;
        let mut statuses = Vec::new();
        let mut charged = 0;
        for i in 0..10 {
            let s = if i % 2 == 0 { &a } else { &b };
            let r = chat(s, Some(&key), body("test/paid", 4)).await;
            statuses.push(r.status().as_u16());
            if r.status() == 200 {
                let v: Value = r.json().await.unwrap();
                charged += cost(&v["usage"]);
            }
        }
        assert_eq!(
            statuses.iter().filter(|&&c| c == 200).count(),
            5,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|&&c| c == 429).count(),
            5,
            "{statuses:?}"
        );
        let (b1, held) = balance(&b, &name).await;
        assert_eq!(held, 0);
        assert_eq!(b0 - b1, charged);
    });
    // No overdraw across replicas: a fresh account (fresh RPM counters) with money for
    // a few requests, 20 at once spread over both.
    let name2 = unique("replicas-money");
    let key2 = account(&pg, &name2, "0.10");
    run(async {
        let (statuses, charged) = burst(&[&a, &b], &key2, 20, 8).await;
        assert!(
            statuses.iter().all(|&c| c == 200 || c == 402 || c == 429),
            "{statuses:?}"
        );
        let (bal, held) = settled(&a, &name2).await;
        assert_eq!(held, 0);
        assert!(bal >= 0, "overdrawn: {bal}");
        assert_eq!(100_000 - bal, charged);
    });
}

#[test]
fn the_ledger_survives_sigkill_mid_load() {
    let (pg, _) = services();
    let name = unique("kill");
    let key = account(&pg, &name, "5.00");
    let cfg = config("");
    let instance = format!("{name}-server");
    let args = [
        "--database",
        &pg,
        "--config",
        cfg.to_str().unwrap(),
        "--admin-key",
        ADMIN,
        "--instance",
        &instance,
    ];
    let s = serve(&pg, &cfg, &["--instance", &instance]);
    let port = s.port();
    let started = run_returning(async {
        // Eight streams: three short ones that finish, five of up to 200 tokens that the
        // server dies in the middle of.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let url = s.url("/v1/chat/completions");
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                let mut req = body("test/paid", if i < 3 { 3 } else { 200 });
                req["stream"] = json!(true);
                let r = client().post(url).bearer_auth(key).json(&req).send().await;
                if let Ok(r) = r {
                    let mut st = r.bytes_stream();
                    while let Some(Ok(_)) = st.next().await {}
                }
            }));
        }
        // The short ones end; the long ones are still generating when the kill comes.
        let long = tasks.split_off(3);
        for t in tasks {
            t.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        long
    });
    s.kill();
    drop(started);
    // The same instance comes back: what the dead run had reserved is released.
    let s = Server::start_on(port, &args);
    run(async {
        let (bal, held) = balance(&s, &name).await;
        assert_eq!(held, 0, "reservations released on restart");
        let usage = admin_get(&s, "/admin/usage").await;
        let row = usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["account"] == name)
            .cloned()
            .expect("usage recorded");
        assert_eq!(
            row["requests"], 8,
            "every admitted request has one usage row: {row}"
        );
        // The ledger adds up: what was charged (the finished requests) is what left the
        // balance; the interrupted ones cost nothing.
        assert!(
            micros(&row["cost"]) > 0,
            "the finished requests were charged: {row}"
        );
        assert_eq!(5_000_000 - bal, micros(&row["cost"]), "{row}");
    });
}

#[test]
fn the_admin_api_manages_accounts_and_keys() {
    let s = Server::start(&["--admin-key", ADMIN]);
    run(async {
        let post = |path: &str, body: Value, key: &str| {
            client()
                .post(s.url(path))
                .bearer_auth(key)
                .json(&body)
                .send()
        };
        // Its own key, never an API key.
        let r = post("/admin/accounts", json!({"name": "x"}), "wrong")
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = post("/admin/accounts", json!({"name": "ops"}), ADMIN)
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = post("/admin/accounts", json!({"name": "ops"}), ADMIN)
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let r = post(
            "/admin/accounts/ops/credit",
            json!({"amount": "1.5"}),
            ADMIN,
        )
        .await
        .unwrap();
        let a: Value = r.json().await.unwrap();
        assert_eq!(a["balance"], "1.50");
        let r = post("/admin/accounts/ops/credit", json!({"amount": 1.5}), ADMIN)
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "money is a decimal string, not a float");
        let r = post("/admin/keys", json!({"account": "ops"}), ADMIN)
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let k: Value = r.json().await.unwrap();
        let secret = k["key"].as_str().unwrap().to_owned();
        // The first key turns authentication on; the key works, then is revoked.
        let r = client().get(s.url("/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = client()
            .get(s.url("/v1/models"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let keys = admin_get(&s, "/admin/keys").await;
        assert_eq!(keys["data"][0]["prefix"], k["prefix"]);
        assert!(
            keys["data"][0].get("key").is_none(),
            "the secret is never listed"
        );
        let r = client()
            .delete(s.url(&format!("/admin/keys/{}", k["id"])))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = client()
            .get(s.url("/v1/models"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "revoked through this server: at once");
    });
}

#[test]
fn an_open_server_refuses_a_public_address() {
    let ledger = temp_db("public");
    let db = ledger.sqlite_url();
    let public = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenfab"));
        cmd.args(["serve", "--host", "0.0.0.0", "--port", "0", "--database"])
            .arg(&db)
            .env("RUST_LOG", "warn");
        cmd
    };
    let out = public().output().expect("run tokenfab");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without API keys") && err.contains("--allow-open"),
        "{err}"
    );
    // With a key, the same address is served (checked by the refusal going away: the
    // server then starts, and is stopped here).
    account(&db, "someone", "0");
    let mut child = public()
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn tokenfab");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a server with keys serves any address"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_client_that_hangs_up_on_a_plain_answer_pays_for_what_was_generated() {
    let ledger = temp_db("hangup");
    let db = ledger.sqlite_url();
    let key = account(&db, "impatient", "5.00");
    let cfg = config("");
    let s = serve(&db, &cfg, &[]);
    run(async {
        // A long non-streamed answer; the client gives up before it is done. The greedy
        // answer to `body`'s question is 123 tokens, which an idle machine generates within
        // the client's patience; this one runs to all 400 (about 1.7 s).
        let long = long_body("test/paid", 400);
        let r = client()
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .timeout(Duration::from_millis(600))
            .json(&long)
            .send()
            .await;
        assert!(r.is_err(), "the answer came before the client hung up");
        let (bal, held) = settled(&s, "impatient").await;
        assert_eq!(held, 0, "the reservation was released");
        let usage = admin_get(&s, "/admin/usage").await;
        let row = usage["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["account"] == "impatient")
            .cloned()
            .expect("the request was recorded");
        let generated = row["completion_tokens"].as_i64().unwrap();
        assert!(
            (1..400).contains(&generated),
            "billed {generated} generated tokens"
        );
        let expected = row["prompt_tokens"].as_i64().unwrap() * IN + generated * OUT;
        assert_eq!(micros(&row["cost"]), expected, "{row}");
        assert_eq!(5_000_000 - bal, expected);
    });
}

/// `/v1/completions` goes through the same keys, prices and ledger as chat: a batch is
/// charged exactly for every prompt and every generated token, a stream for what its usage
/// chunk says, and a key without balance is refused on the paid model only.
#[test]
fn completions_are_charged_like_chat() {
    let ledger = temp_db("ledger");
    let db = ledger.sqlite_url();
    let rich = account(&db, "rich", "10.00");
    let poor = account(&db, "poor", "0");
    let cfg = config("");
    let s = serve(&db, &cfg, &[]);
    run(async {
        let complete = |key: &str, body: Value| {
            client()
                .post(s.url("/v1/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
        };
        let (b0, _) = balance(&s, "rich").await;
        let batch = json!({"model": "test/paid", "prompt": ["Red, green and", "One, two,"],
            "n": 2, "max_tokens": 5, "temperature": 0});
        let r = complete(&rich, batch).await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let (b1, held) = settled(&s, "rich").await;
        assert_eq!((b0 - b1, held), (cost(&v["usage"]), 0), "{v}");

        let streamed = json!({"model": "test/paid", "prompt": "Red, green and", "max_tokens": 5,
            "stream": true, "stream_options": {"include_usage": true}});
        let text = complete(&rich, streamed)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let usage = stream_usage(&text);
        let (b2, _) = settled(&s, "rich").await;
        assert_eq!(b1 - b2, cost(&usage), "{text}");

        let paid = json!({"model": "test/paid", "prompt": "Hi", "max_tokens": 2});
        let status = complete(&poor, paid).await.unwrap().status().as_u16();
        assert!(status == 402 || status == 403, "{status}");
        let free = json!({"model": "test/free", "prompt": "Hi", "max_tokens": 2});
        assert_eq!(complete(&poor, free).await.unwrap().status(), 200);
    });
}

/// An embedding model's price is on its input tokens: the key's account pays
/// `usage.prompt_tokens` at `input_per_million`, and an account without balance is refused.
#[test]
fn embeddings_are_charged_for_their_input_tokens() {
    let ledger = temp_db("ledger");
    let db = ledger.sqlite_url();
    let rich = account(&db, "rich", "10.00");
    let poor = account(&db, "poor", "0");
    let cfg = config(
        "[[models]]\nid = \"test/embed\"\nsource = \"sentence-transformers/all-MiniLM-L6-v2\"\n\
         type = \"embedding\"\ninput_per_million = \"1000\"\n",
    );
    let s = serve(&db, &cfg, &[]);
    run(async {
        let embed = |key: &str| {
            client()
                .post(s.url("/v1/embeddings"))
                .bearer_auth(key)
                .json(&json!({"model": "test/embed", "input": ["Red, green and blue.", "Hi"]}))
                .send()
        };
        let (b0, _) = balance(&s, "rich").await;
        let r = embed(&rich).await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        let tokens = v["usage"]["prompt_tokens"].as_i64().unwrap();
        assert!(tokens > 0, "{v}");
        let (b1, held) = settled(&s, "rich").await;
        assert_eq!((b0 - b1, held), (tokens * IN, 0), "{v}");
        let status = embed(&poor).await.unwrap().status().as_u16();
        assert!(status == 402 || status == 403, "{status}");
    });
}
