//! The web console and the routes it reads, on the real binary and the real model: the
//! embedded files and their headers; `/v1/user/usage` and `/v1/user/requests`, which show
//! a key holder their own account and nobody else's; the admin's prices and limits in
//! force and models with their health; the reasoning field of `/v1/models`. Then the
//! console itself in headless Chromium (tests/python/console_browser.py, Playwright from
//! `.venv`, which scripts/test.sh installs along with Debian's `chromium`).
//!
//! `TOKENFAB_CONSOLE_SCREENSHOT=$PWD/docs/console.png cargo test --release -p tokenfab
//! --test console` refreshes the README's picture.

mod common;

use std::process::Command;

use common::ledger::{ADMIN, admin_post};
use common::{MODEL, Server, run};
use serde_json::{Value, json};
use tokenfab_testkit::TempPath;

/// SmolLM2 made to think: its template opens the thought unless `enable_thinking` is
/// false (so the switch is offered), and the budget closes it, so a thought always comes.
const THINK: &str = "smol/think";
const THINK_TEMPLATE: &str = r#"{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' -}}{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- if enable_thinking is not defined or enable_thinking -%}{{- '<think>\n' -}}{%- endif -%}{%- endif -%}"#;

/// A server of the plain and the thinking model, both paid, with a default-tier RPM
/// limit, the admin API and a ledger of its own; and its config's folder.
fn start() -> (Server, TempPath) {
    let dir = tokenfab_testkit::temp_dir("console");
    std::fs::write(dir.join("think.jinja"), THINK_TEMPLATE).unwrap();
    let config = dir.join("tokenfab.toml");
    std::fs::write(
        &config,
        format!(
            r#"max_output_tokens = 1024

[limits.default]
rpm = 60

[[models]]
id = "{MODEL}"
source = "{MODEL}"
input_per_million = "1000"
output_per_million = "2000"

[[models]]
id = "{THINK}"
source = "{MODEL}"
reasoning = true
chat_template_file = "think.jinja"
thinking_budget = 24
input_per_million = "1000"
output_per_million = "2000"
"#
        ),
    )
    .unwrap();
    let s = Server::start(&["--config", config.to_str().unwrap(), "--admin-key", ADMIN]);
    (s, dir)
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(s: &Server, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut r = client().get(s.url(path));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// An account with money and a key for it.
async fn holder(s: &Server, name: &str) -> (String, String) {
    admin_post(s, "/admin/accounts", json!({"name": name})).await;
    admin_post(
        s,
        &format!("/admin/accounts/{name}/credit"),
        json!({"amount": "1"}),
    )
    .await;
    let k = admin_post(s, "/admin/keys", json!({"account": name})).await;
    (
        k["key"].as_str().unwrap().to_owned(),
        k["prefix"].as_str().unwrap().to_owned(),
    )
}

async fn chat(s: &Server, key: &str, model: &str) -> Value {
    let r = client()
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(
            &json!({"model": model, "messages": [{"role": "user", "content": "Hi."}],
                      "max_tokens": 4, "temperature": 0}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["usage"].clone()
}

#[test]
fn console_files_are_embedded_small_and_self_contained() {
    let (s, _dir) = start();
    run(async {
        let r = client().get(s.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
        let page = r.text().await.unwrap();
        assert!(page.contains(r#"src="/console/app.js""#), "{page}");
        let mut total = page.len();
        let files = [
            ("style.css", "text/css; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("api.js", "text/javascript; charset=utf-8"),
            ("playground.js", "text/javascript; charset=utf-8"),
            ("account.js", "text/javascript; charset=utf-8"),
            ("chart.js", "text/javascript; charset=utf-8"),
            ("admin.js", "text/javascript; charset=utf-8"),
        ];
        for (name, kind) in files {
            let r = client()
                .get(s.url(&format!("/console/{name}")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{name}");
            assert_eq!(r.headers()["content-type"], kind, "{name}");
            assert_eq!(r.headers()["cache-control"], "no-cache", "{name}");
            let etag = r.headers()["etag"].clone();
            let text = r.text().await.unwrap();
            total += text.len();
            // Nothing from elsewhere: the only URL is SVG's namespace, a name, not a fetch.
            let outside = text
                .replace("http://www.w3.org/2000/svg", "")
                .contains("://");
            assert!(!outside, "{name} refers to another site");
            // Revalidation: unchanged, a 304 without the body.
            let again = client()
                .get(s.url(&format!("/console/{name}")))
                .header("if-none-match", etag)
                .send()
                .await
                .unwrap();
            assert_eq!(again.status(), 304, "{name}");
        }
        assert!(total < 60_000, "the console is {total} bytes");
        // An unknown file is the API's 404, not a page.
        let (status, e) = get(&s, "/console/nope.js", None).await;
        assert_eq!(status, 404);
        assert!(e["error"]["message"].is_string(), "{e}");
        // Every script the page loads is embedded: each import names a served file.
        for (name, _) in files.iter().filter(|(n, _)| n.ends_with(".js")) {
            let text = reqwest::get(s.url(&format!("/console/{name}")))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            for import in text.lines().filter_map(|l| l.split("from \"./").nth(1)) {
                let file = import.split('"').next().unwrap();
                assert!(
                    files.iter().any(|(n, _)| *n == file),
                    "{name} imports {file}"
                );
            }
        }
    });
}

#[test]
fn user_reports_show_only_the_callers_account_and_admin_reads_terms_and_models() {
    let (s, _dir) = start();
    run(async {
        // A model says it reasons only when the engine does, with what a request may steer.
        let (_, models) = get(&s, "/v1/models", None).await;
        let by_id = |id: &str| {
            models["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == id)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            by_id(THINK)["reasoning"],
            json!({"switchable": true, "thinking_budget": 24})
        );
        assert!(by_id(MODEL).get("reasoning").is_none());

        let (a, a_prefix) = holder(&s, "alice").await;
        let (b, _) = holder(&s, "bob").await;
        let used = chat(&s, &a, MODEL).await;
        chat(&s, &a, THINK).await;
        chat(&s, &b, MODEL).await;
        chat(&s, &b, MODEL).await;

        let (status, usage) = get(&s, "/v1/user/usage", Some(&a)).await;
        assert_eq!(status, 200, "{usage}");
        let today = usage["to"].as_str().unwrap().to_owned();
        let rows = usage["data"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{usage}");
        for row in rows {
            assert_eq!(
                (row["account"].as_str(), row["day"].as_str()),
                (Some("alice"), Some(today.as_str()))
            );
            assert_eq!(row["requests"], 1);
            assert!(row["cost"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
        }
        let plain = rows.iter().find(|r| r["model"] == MODEL).unwrap();
        assert_eq!(plain["prompt_tokens"], used["prompt_tokens"]);
        assert_eq!(plain["completion_tokens"], used["completion_tokens"]);
        let think = rows.iter().find(|r| r["model"] == THINK).unwrap();
        assert!(think["reasoning_tokens"].as_u64().unwrap() > 0, "{think}");
        let (_, theirs) = get(&s, "/v1/user/usage", Some(&b)).await;
        assert_eq!(theirs["data"].as_array().unwrap().len(), 1);
        assert_eq!(theirs["data"][0]["requests"], 2);
        // A period without usage is empty; a day of this one covers it.
        let (_, old) = get(&s, "/v1/user/usage?from=2020-01-01&to=2020-01-31", Some(&a)).await;
        assert_eq!(old["data"], json!([]));
        let (_, day) = get(
            &s,
            &format!("/v1/user/usage?from={today}&to={today}"),
            Some(&a),
        )
        .await;
        assert_eq!(day["data"].as_array().unwrap().len(), 2);

        let (status, recent) = get(&s, "/v1/user/requests?limit=5", Some(&a)).await;
        assert_eq!(status, 200);
        let recent = recent["data"].as_array().unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0]["model"], THINK, "newest first");
        assert_eq!(recent[1]["prompt_tokens"], used["prompt_tokens"]);
        for r in recent {
            assert_eq!(r["key"].as_str(), Some(a_prefix.as_str()));
            assert_eq!(r["status"], "length");
        }
        let (_, one) = get(&s, "/v1/user/requests?limit=1", Some(&b)).await;
        assert_eq!(one["data"].as_array().unwrap().len(), 1);

        // Bad queries are OpenAI-shaped 400s naming the parameter; no key is a 401.
        for (path, param) in [
            ("/v1/user/usage?from=yesterday", Value::from("from")),
            (
                "/v1/user/usage?from=2026-02-02&to=2026-02-01",
                "from".into(),
            ),
            (
                "/v1/user/usage?from=2020-01-01&to=2026-01-01",
                "from".into(),
            ),
            ("/v1/user/requests?limit=0", "limit".into()),
            ("/v1/user/requests?limit=many", Value::Null),
        ] {
            let (status, e) = get(&s, path, Some(&a)).await;
            assert_eq!((status, &e["error"]["param"]), (400, &param), "{path}: {e}");
            assert_eq!(e["error"]["type"], "invalid_request_error");
        }
        for path in ["/v1/user/usage", "/v1/user/requests"] {
            let (status, e) = get(&s, path, None).await;
            assert_eq!(
                (status, e["error"]["code"].as_str()),
                (401, Some("invalid_api_key"))
            );
        }

        // The admin's view: prices and limits as admission applies them, and the models.
        let (status, _) = get(&s, "/admin/terms", Some(&a)).await;
        assert_eq!(status, 401);
        let (_, terms) = get(&s, "/admin/terms", Some(ADMIN)).await;
        assert_eq!(terms["tiers"]["default"]["rpm"], 60);
        let price = terms["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == THINK)
            .unwrap();
        assert_eq!(price["input_per_million"], "1000.00");
        assert_eq!(price["output_per_million"], "2000.00");
        assert_eq!(price["free"], false);
        assert_eq!(
            price["limits"]["default"],
            json!({"rpm": 60, "tpm": null, "rpd": null, "tpd": null})
        );
        let (_, models) = get(&s, "/admin/models", Some(ADMIN)).await;
        let think = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == THINK)
            .unwrap();
        assert_eq!(
            (
                &think["serve"],
                &think["running"],
                &think["reasoning"]["thinking_budget"]
            ),
            (&json!("local"), &json!(0), &json!(24))
        );
        assert!(think["context_length"].as_u64().unwrap() > 0);
    });
}

#[test]
fn console_in_a_headless_browser() {
    let Ok(python) = std::env::var("TOKENFAB_TEST_PYTHON") else {
        eprintln!(
            "TOKENFAB_TEST_PYTHON is not set: the browser test is skipped (scripts/test.sh \
             installs Playwright in .venv and Chromium, and sets it)"
        );
        return;
    };
    let chromium =
        std::env::var("TOKENFAB_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: install Debian's `chromium` (scripts/test.sh does)"
    );
    let (s, _dir) = start();
    let script = format!(
        "{}/tests/python/console_browser.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(python)
        .arg(&script)
        .env("TOKENFAB_CONSOLE_URL", &s.base)
        .env("TOKENFAB_ADMIN_KEY", ADMIN)
        .env("TOKENFAB_MODEL", MODEL)
        .env("TOKENFAB_THINK_MODEL", THINK)
        .env("TOKENFAB_CHROMIUM", &chromium)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("{summary}");
    assert!(summary["stream_updates"].as_u64().unwrap() >= 3);
    assert!(summary["thought_chars"].as_u64().unwrap() > 0);
    assert!(summary["stopped_completion_tokens"].as_u64().unwrap() > 0);
}
