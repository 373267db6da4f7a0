//! `/metrics` end to end: the real binary serves it behind the admin key, and a real
//! Prometheus (Debian's package; scripts/test.sh installs it and exports
//! TOKENFAB_TEST_PROMETHEUS) scrapes it, after which PromQL over the scraped series gives
//! the counts of a known set of requests.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, free_port, run};
use serde_json::{Value, json};
use tokenfab_testkit::{TempPath, temp_dir, temp_path};

const ADMIN: &str = "metrics-admin-key-0123456789";
const PAID: &str = "test/paid";

fn config() -> TempPath {
    let path = temp_path("metrics-config", "toml");
    std::fs::write(
        &path,
        format!(
            "[[models]]\nid = \"{PAID}\"\nsource = \"{}\"\ninput_per_million = \"1000\"\noutput_per_million = 2000\n",
            common::MODEL
        ),
    )
    .unwrap();
    path
}

/// The server, and a key of an account with credit.
fn serve(db: &TempPath, config: &TempPath) -> (Server, String) {
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tokenfab"))
            .args(args)
            .args(["--database", &db.sqlite_url()])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    cli(&["accounts", "create", "alice"]);
    cli(&["accounts", "top-up", "alice", "--add", "10"]);
    let key = cli(&["keys", "create", "--account", "alice"]);
    let server = Server::start(&[
        "--database",
        &db.sqlite_url(),
        "--config",
        config.to_str().unwrap(),
        "--admin-key",
        ADMIN,
    ]);
    (server, key)
}

/// What the requests below must show in the metrics.
struct Expected {
    answered: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// Three answered chats (one streamed), one request without a key, one for a model that
/// does not exist.
async fn traffic(s: &Server, key: &str) -> Expected {
    let http = reqwest::Client::new();
    let mut e = Expected {
        answered: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
    };
    for (i, content) in ["Name a colour.", "Name a fruit.", "Count to three."]
        .iter()
        .enumerate()
    {
        let mut body = json!({
            "model": PAID,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 6,
            "temperature": 0,
        });
        let stream = i == 2;
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = http
            .post(s.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let usage = if stream {
            let last = common::sse_events(&text)
                .into_iter()
                .rfind(|d| d != "[DONE]")
                .unwrap();
            serde_json::from_str::<Value>(&last).unwrap()["usage"].clone()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
        };
        e.answered += 1;
        e.prompt_tokens += usage["prompt_tokens"].as_u64().unwrap();
        e.completion_tokens += usage["completion_tokens"].as_u64().unwrap();
    }
    let r = http
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": PAID, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "no/such-model", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    e
}

#[test]
fn metrics_count_a_known_set_of_requests_and_prometheus_scrapes_them() {
    let prometheus = std::env::var("TOKENFAB_TEST_PROMETHEUS").unwrap_or_else(|_| {
        panic!(
            "TOKENFAB_TEST_PROMETHEUS is not set: run scripts/test.sh, which installs Debian's \
             prometheus, or set it to a prometheus binary"
        )
    });
    let db = tokenfab_testkit::temp_db("metrics");
    let cfg = config();
    let (server, key) = serve(&db, &cfg);
    run(async {
        let e = traffic(&server, &key).await;
        let http = reqwest::Client::new();

        // Behind the admin key: an API key is not enough.
        let r = http.get(server.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(server.url("/metrics"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = http
            .get(server.url("/metrics"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let page = r.text().await.unwrap();
        let model = format!("model_name=\"{PAID}\"");
        let get = |name: &str, labels: &[(&str, &str)]| {
            common::metric(&page, name, labels)
                .unwrap_or_else(|| panic!("no series {name} {labels:?} in:\n{page}"))
        };
        let paid = [("model_name", PAID)];
        assert_eq!(
            get(
                "tokenfab:http_requests_total",
                &[("status", "200"), ("model", PAID)]
            ),
            e.answered as f64
        );
        assert_eq!(
            get(
                "tokenfab:http_requests_total",
                &[("status", "404"), ("model", "")]
            ),
            1.0
        );
        assert_eq!(
            get(
                "tokenfab:refusals_total",
                &[("status", "401"), ("reason", "missing_key")]
            ),
            1.0
        );
        assert_eq!(
            get("tokenfab:prompt_tokens_total", &paid),
            e.prompt_tokens as f64
        );
        assert_eq!(
            get("tokenfab:generation_tokens_total", &paid),
            e.completion_tokens as f64
        );
        for latency in [
            "tokenfab:time_to_first_token_seconds_count",
            "tokenfab:e2e_request_latency_seconds_count",
        ] {
            assert_eq!(get(latency, &paid), e.answered as f64, "{latency}");
        }
        assert_eq!(
            get("tokenfab:inter_token_latency_seconds_count", &paid),
            (e.completion_tokens - e.answered) as f64,
            "one gap between each two tokens of each answer"
        );
        assert_eq!(get("tokenfab:num_requests_running", &paid), 0.0);
        assert!(get("tokenfab:ledger_settle_seconds_count", &[]) >= e.answered as f64);

        // A real Prometheus scrapes the page with the admin key, and PromQL gives the
        // same counts.
        let dir = temp_dir("prometheus");
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tokenfab\n    \
                 metrics_path: /metrics\n    authorization:\n      credentials: {ADMIN}\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{}']\n",
                server.port()
            ),
        )
        .unwrap();
        let _prom = Guard(
            Command::new(&prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("log")).unwrap())
                .spawn()
                .expect("start prometheus"),
        );
        let api = format!("http://127.0.0.1:{port}/api/v1/query");
        let query = |q: String| {
            let http = http.clone();
            let api = api.clone();
            async move {
                let r = http.get(&api).query(&[("query", &q)]).send().await.ok()?;
                let v: Value = r.json().await.ok()?;
                let s = v["data"]["result"][0]["value"][1].as_str()?;
                s.parse::<f64>().ok()
            }
        };
        let checks = [
            (
                format!("sum(tokenfab:http_requests_total{{status=\"200\",model=\"{PAID}\"}})"),
                e.answered as f64,
            ),
            (
                format!("sum(tokenfab:request_success_total{{{model}}})"),
                e.answered as f64,
            ),
            (
                format!("tokenfab:generation_tokens_total{{{model}}}"),
                e.completion_tokens as f64,
            ),
            (
                "sum by (reason) (tokenfab:refusals_total{reason=\"missing_key\"})".into(),
                1.0,
            ),
            ("up{job=\"tokenfab\"}".into(), 1.0),
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        for (q, want) in checks {
            loop {
                let got = query(q.clone()).await;
                if got == Some(want) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "PromQL `{q}` gave {got:?}, not {want}; prometheus log:\n{}",
                    std::fs::read_to_string(dir.join("log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        // A quantile over the scraped histogram: the median time to the first token is a
        // positive number of seconds.
        let q = format!(
            "histogram_quantile(0.5, sum by (le) (tokenfab:time_to_first_token_seconds_bucket{{{model}}}))"
        );
        let median = query(q).await.expect("a median time to first token");
        assert!(median > 0.0 && median < 600.0, "{median}");
    });
}

/// Stops a child process when dropped, also when the test fails.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
