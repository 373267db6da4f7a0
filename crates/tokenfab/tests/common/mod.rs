//! Starts the real `tokenfab` binary on a free loopback port with the real test model,
//! and stops it when the guard drops. Model-heavy: test binaries that use it run their
//! tests one at a time (`--test-threads=1` in scripts/test.sh), so two engines never fight
//! over the two cores.
//!
//! Beside it: [`ledger`], a server of paid and free models with the admin API, and the
//! balances and costs the billing tests check; [`stub`], scripted upstreams for the proxy.

#![allow(dead_code)]

pub mod ledger;
pub mod stub;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use tokenfab_testkit::TempPath;
/// upstream.rs takes it from here.
pub use tokenfab_testkit::temp_db;

pub const MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

pub struct Server {
    child: Child,
    pub base: String,
    /// The ledger file this server got when the caller named none (removed on drop).
    own_db: Option<TempPath>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// The default model, served as `serve` would serve it, plus `extra` flags; with a
    /// ledger of its own unless `extra` names one (`--database`).
    pub fn start(extra: &[&str]) -> Server {
        Self::start_on(free_port(), extra)
    }

    /// As [`Server::start`], on a given port (a restart under the same instance name).
    pub fn start_on(port: u16, extra: &[&str]) -> Server {
        Self::start_with(port, extra, None, &[])
    }

    /// As [`Server::start`], with the server's log at `info` written to `log`, for tests
    /// that check what it reports.
    pub fn start_logged(extra: &[&str], log: &std::path::Path) -> Server {
        Self::start_with(free_port(), extra, Some(log), &[])
    }

    /// As [`Server::start_logged`], the server run by `launcher`: a command line that ends
    /// by running the command it is given after it (`unshare … sh -c '… exec "$@"'`), in
    /// the same process, so that [`Server::pid`] is the server's.
    pub fn start_in(launcher: &[String], extra: &[&str], log: &std::path::Path) -> Server {
        Self::start_with(free_port(), extra, Some(log), launcher)
    }

    fn start_with(
        port: u16,
        extra: &[&str],
        log: Option<&std::path::Path>,
        launcher: &[String],
    ) -> Server {
        let own_db = (!extra.contains(&"--database")).then(|| temp_db("server"));
        let binary = env!("CARGO_BIN_EXE_tokenfab");
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.args(["serve", "--port", &port.to_string(), "--threads", "2"])
            .args(extra)
            .env_remove("TOKENFAB_DATABASE_URL")
            .stdout(Stdio::null());
        match log {
            Some(path) => cmd
                .env("RUST_LOG", "info")
                .stderr(std::fs::File::create(path).expect("create the server's log")),
            None => cmd.env("RUST_LOG", "warn").stderr(Stdio::inherit()),
        };
        if let Some(db) = &own_db {
            cmd.arg("--database").arg(db.sqlite_url());
        }
        let child = cmd.spawn().expect("spawn tokenfab");
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            own_db,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "tokenfab exited with {status} before serving; is the model cached? \
                     (`cargo run --release -- models fetch`)"
                );
            }
            if healthy(port) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "tokenfab did not become healthy in 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// Kills the server with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill(self) {
        // Dropping sends SIGKILL (`Child::kill`) and waits.
        drop(self);
    }

    /// Sends the server a signal (`"HUP"`, `"TERM"`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} failed");
    }

    /// Waits for the server to exit on its own; fails if it is still running after
    /// `within`, or already exited for a signal.
    pub fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tokenfab still runs after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

/// One plain HTTP/1.0 GET of /health; no client library needed before the server is up.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

/// Runs one of the seed page's Python programs (tests/python/) with the official `openai`
/// package against `server`, serving `model`; returns what the program printed as JSON.
pub fn run_seed(server: &Server, script: &str, model: &str) -> serde_json::Value {
    let python = std::env::var("TOKENFAB_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("TOKENFAB_TEST_PYTHON is not set: run scripts/test.sh, which installs the openai package in .venv")
    });
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python)
        .arg(&path)
        .env("TOKENFAB_BASE_URL", server.url("/v1/"))
        .env("TOKENFAB_MODEL", model)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{script} printed {stdout}: {e}"))
}

/// POSTs a chat-completions body; returns the status and the JSON answer.
pub async fn post(server: &Server, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Runs the CLI on a ledger; returns stdout.
pub fn cli(db: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokenfab"))
        .args(args)
        .args(["--database", db])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tokenfab");
    assert!(
        out.status.success(),
        "tokenfab {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An account with `balance` and a key for it.
pub fn account(db: &str, name: &str, balance: &str) -> String {
    cli(db, &["accounts", "create", name]);
    if balance != "0" {
        cli(db, &["accounts", "top-up", name, "--add", balance]);
    }
    let key = cli(db, &["keys", "create", "--account", name])
        .trim()
        .to_owned();
    assert!(key.starts_with("sk-") && key.len() > 40, "{key}");
    key
}

/// An account's (balance, reserved) in micro-units, read with the CLI (`accounts show`),
/// which needs no server.
pub fn account_state(db: &str, name: &str) -> (i64, i64) {
    let line = cli(db, &["accounts", "show", name]);
    let after = |word: &str| {
        let v = line
            .split_whitespace()
            .skip_while(|w| *w != word)
            .nth(1)
            .unwrap_or_else(|| panic!("no {word} in {line}"));
        micros(&serde_json::Value::String(v.to_owned()))
    };
    (after("balance"), after("reserved"))
}

/// Reads one response whose body has a `content-length` from a raw connection, leaving
/// the connection open; the head and the body as text.
pub fn read_response(c: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    let mut buf = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut buf).unwrap(), 1, "closed inside a head");
        out.push(buf[0]);
    }
    let head = String::from_utf8(out).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).unwrap();
    head + &String::from_utf8_lossy(&body)
}

/// A decimal string of money (`"4.99"`) in micro-units.
pub fn micros(v: &serde_json::Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let neg = int.starts_with('-');
    let whole: i64 = int.trim_start_matches('-').parse().unwrap();
    let mut f = frac.to_owned();
    while f.len() < 6 {
        f.push('0');
    }
    let v = whole * 1_000_000 + f.parse::<i64>().unwrap();
    if neg { -v } else { v }
}

/// Runs an async test body on a fresh runtime.
pub fn run<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Runs an async block on a runtime that is then dropped (its tasks die with it).
pub fn run_returning<T>(f: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(f);
    rt.shutdown_background();
    out
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

/// The calls a stream's chunks assemble, as (name, arguments), checking OpenAI's delta
/// rules: a call's first delta has its index (the next one), id, type and name.
pub fn streamed_calls(chunks: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut calls: Vec<(String, String)> = Vec::new();
    for delta in chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .flat_map(|c| {
            c["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
    {
        let i = delta["index"].as_u64().unwrap() as usize;
        if i == calls.len() {
            assert!(
                delta["id"].is_string() && delta["type"] == "function",
                "{delta}"
            );
            calls.push((
                delta["function"]["name"].as_str().unwrap().to_owned(),
                String::new(),
            ));
        }
        calls[i].1 += delta["function"]["arguments"].as_str().unwrap_or("");
    }
    calls
}

/// Streams a chat-completions body; returns its chunks (the `[DONE]` checked and left out).
pub async fn stream_chunks(server: &Server, body: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut body = body.clone();
    body["stream"] = serde_json::Value::Bool(true);
    let r = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The first choice's answer text of a stream, its content deltas joined.
pub fn streamed_content(chunks: &[serde_json::Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The cached file of a catalog model (scripts/test.sh fetches the test models); a missing
/// one fails with the command that fetches it.
pub fn cached(id: &str) -> std::path::PathBuf {
    let spec: tokenfab_models::ModelSpec = id.parse().unwrap();
    spec.resolve(&tokenfab_models::default_cache_dir(), false)
        .unwrap_or_else(|e| panic!("{id}: {e}; run `cargo run --release -- models fetch {id}`"))
        .path
}

/// The sum of a Prometheus text page's samples of metric `name` whose labels include every
/// pair of `labels`; `None` when no series matches.
pub fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            continue;
        }
        let rest = rest.strip_suffix('}').unwrap_or(rest);
        let has = |(k, v): &(&str, &str)| rest.contains(&format!("{k}=\"{v}\""));
        if labels.iter().all(has) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(f64::NAN);
        }
    }
    found
}
