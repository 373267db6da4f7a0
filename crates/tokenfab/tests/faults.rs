//! Faults injected into the real binary serving the real model, on loopback and bounded in
//! time, each checked for what its clients see and for a ledger that is exact afterwards:
//! the balance fell by exactly the costs of the answers clients received (from the
//! answers' own usage), and nothing stays reserved.
//!
//! - **The SQLite ledger's disk fills up** while requests run (the ledger on a small tmpfs
//!   in a mount namespace of the server's own; a filler file takes the rest). The
//!   requests already admitted finish, and their clients get complete answers: their
//!   charges, which the ledger cannot take, are kept by the settler and retried, their
//!   holds staying in the ledger meanwhile. A new paid request is answered `503`
//!   `ledger_unavailable` with `retry-after` (its hold cannot be written); a free one is
//!   still answered. Once space is freed the kept charges are recorded, without a restart,
//!   and paid requests are answered again.
//! - **PostgreSQL restarts mid-load** (`pg_ctl restart -m fast` under concurrent
//!   clients): every client gets its answer (some later, while the pool reconnects) or a
//!   `503` `ledger_unavailable` with `retry-after`; the server serves again afterwards
//!   without being restarted, and every answer is charged once.
//! - **An upstream resets the connection mid-answer** (TCP RST): a stream already
//!   answered 200 ends with an OpenAI error event (`upstream_error`) and no `[DONE]`; a
//!   whole answer is a `502` `upstream_error`. Neither is charged (an upstream failure is
//!   the server's, like an engine failure); each leaves an `error` usage row.
//! - **SIGTERM under load** (graceful drain): new connections are refused at once (the
//!   listener is closed: a client or load balancer may retry elsewhere, nothing was
//!   sent); a request arriving on a connection kept alive from before is answered `503`
//!   `shutting_down` with `retry-after` and `connection: close`; the requests in flight
//!   finish, complete and charged; the process exits 0.
//! - **SIGTERM past the shutdown grace** (`--shutdown-grace-secs`): the requests still
//!   running are cut when it ends (a stream without `[DONE]`, a whole answer's connection
//!   closed unanswered), billed as a client's hang-up is (a stream for what it passed on,
//!   a whole answer nothing), and recorded before the process exits 0: nothing stays
//!   reserved for a restart to release.
//! - Redis stopped mid-load: crates/platform/tests/redis_outage.rs (rate limits fail
//!   closed with 503 by default, or open with `rate_limits_fail_open`).
//!
//! PostgreSQL comes from scripts/services.sh (TOKENFAB_TEST_PG, and TOKENFAB_TEST_PG_CTL
//! to restart it).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ledger::{
    IN, OUT, Seen, admin_get, args, balance, body, chat, client, config, cost, held, long_body,
    open_account, send, serve, services, settled,
};
use common::stub::{Resetter, Stub};
use common::{
    MODEL, Server, account, account_state, cli, micros, read_response, run, run_returning,
    sse_events,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokenfab_testkit::{temp_db, temp_dir, temp_path, unique};

/// Far above anything here takes on a loaded machine: only "does not hang" is checked
/// against it.
const BOUND: Duration = Duration::from_secs(60);

/// The prompt tokens of [`long_body`] on `test/paid`, learned from a one-token answer,
/// and that answer's cost.
async fn long_prompt(s: &Server, key: &str) -> (i64, i64) {
    let r = chat(s, Some(key), long_body("test/paid", 1)).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    (
        v["usage"]["prompt_tokens"].as_i64().unwrap(),
        cost(&v["usage"]),
    )
}

/// Starts `n` long paid requests (every other one streamed) of at most `max_tokens`.
fn long_requests(
    s: &Server,
    key: &str,
    n: usize,
    max_tokens: u32,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    (0..n)
        .map(|i| {
            let body = long_body("test/paid", max_tokens);
            let url = s.url("/v1/chat/completions");
            tokio::spawn(send(url, key.to_owned(), body, i % 2 == 1))
        })
        .collect()
}

/// Fills the file system `path` is on with `path` itself; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f =
        std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let block = vec![0xa5u8; 1 << 16];
    let mut n = 0;
    loop {
        match f.write(&block) {
            Ok(0) => return n,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == ErrorKind::StorageFull => return n,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
}

/// A launcher ([`Server::start_in`]) that runs the server in a mount namespace of its own
/// with a tmpfs of `size` on `dir`, so that nothing reaches the host's mounts: as root
/// with `unshare --mount`, else in a user namespace mapping the user to root. Fails,
/// saying why, where neither can be made (a container without the privilege).
fn tmpfs_launcher(dir: &Path, size: &str) -> Vec<String> {
    let script = r#"mount -t tmpfs -o size="$1" tokenfab-faults "$2" && shift 2 && exec "$@""#;
    let mut why = Vec::new();
    for unshare in [
        &["unshare", "--mount"][..],
        &["unshare", "--user", "--map-root-user", "--mount"],
    ] {
        let mut launcher: Vec<String> = unshare.iter().map(|s| s.to_string()).collect();
        launcher.extend(["sh", "-c", script, "sh", size, dir.to_str().unwrap()].map(str::to_owned));
        match Command::new(&launcher[0])
            .args(&launcher[1..])
            .arg("true")
            .output()
        {
            Ok(out) if out.status.success() => return launcher,
            Ok(out) => why.push(format!(
                "`{}`: {}",
                unshare.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => why.push(format!("`{}`: {e}", unshare.join(" "))),
        }
    }
    panic!(
        "cannot give the server a size-limited file system: a mount namespace needs root or \
         unprivileged user namespaces ({})",
        why.join("; ")
    );
}

#[test]
fn a_full_disk_under_the_sqlite_ledger_refuses_paid_work_and_loses_no_charge() {
    let dir = temp_dir("full-disk");
    let launcher = tmpfs_launcher(&dir, "16m");
    let db = format!("sqlite://{}/ledger.db", dir.display());
    let cfg = config("");
    let log = temp_path("full-disk", "log");
    let mut s = Server::start_in(&launcher, &args(&db, &cfg, &[]), &log);
    // The server's file system, reached from outside its namespace.
    let filler = PathBuf::from(format!("/proc/{}/root{}/filler", s.pid(), dir.display()));
    run(async {
        let key = open_account(&s, "full", "10.00").await;
        let (b0, _) = balance(&s, "full").await;
        let (prompt, first) = long_prompt(&s, &key).await;
        // Four long requests admitted, none settled: then the disk fills.
        let max = 300;
        let running = long_requests(&s, &key, 4, max);
        let hold = prompt * IN + i64::from(max) * OUT;
        held(&s, "full", 4 * hold).await;
        assert!(fill(&filler) > 0, "the tmpfs was full before the filler");

        // A new paid request cannot hold its cost: 503, naming the ledger.
        let r = chat(&s, Some(&key), body("test/paid", 4)).await;
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "ledger_unavailable", "{e}");
        // A free one holds nothing and is answered; its usage row waits for the ledger.
        let r = chat(&s, Some(&key), body("test/free", 4)).await;
        assert_eq!(r.status(), 200);

        // The admitted ones finish with complete answers, whether or not the ledger can
        // take their charges yet (one may fit in the space an earlier failed write left).
        let mut charged = first;
        for t in running {
            let seen = t.await.unwrap();
            assert_eq!(seen.status, 200, "{seen:?}");
            charged += seen.cost;
        }

        // Space again: the kept charges are recorded, without a restart.
        std::fs::remove_file(&filler).unwrap();
        let (b1, reserved) = settled(&s, "full").await;
        assert_eq!(reserved, 0, "the kept charges were not recorded");
        assert_eq!(
            b0 - b1,
            charged,
            "the balance fell by exactly the answers' costs"
        );
        let usage = admin_get(&s, "/admin/usage").await;
        let row = |model: &str| {
            usage["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["account"] == "full" && r["model"] == model)
                .cloned()
                .unwrap_or_else(|| panic!("no usage of {model}: {usage}"))
        };
        assert_eq!(micros(&row("test/paid")["cost"]), charged);
        assert_eq!(
            row("test/free")["requests"],
            1,
            "the free request's row was kept"
        );

        let seen = send(
            s.url("/v1/chat/completions"),
            key,
            body("test/paid", 4),
            false,
        )
        .await;
        assert_eq!(
            seen.status, 200,
            "paid requests are answered again: {seen:?}"
        );
    });
    assert!(s.running(), "the server died on a full disk");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("the ledger cannot be written")
            && log.contains("the kept settlements are recorded")
            && !log.contains("panicked"),
        "{log}"
    );
}

/// `n` clients sending one paid request after another to `url` (every other one
/// streamed) until told to stop; what each saw.
async fn clients(url: String, key: String, n: usize, stop: Arc<AtomicBool>) -> Vec<Seen> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (url, key, stop) = (url.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let b = body("test/paid", 12);
                    seen.push(send(url.clone(), key.clone(), b, i % 2 == 1).await);
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[test]
fn postgresql_restarted_mid_load_loses_no_charge() {
    let (pg, _) = services();
    let pg_ctl = std::env::var("TOKENFAB_TEST_PG_CTL").expect(
        "TOKENFAB_TEST_PG_CTL is not set: run scripts/test.sh, whose PostgreSQL it restarts",
    );
    let name = unique("pg-restart");
    let key = account(&pg, &name, "50.00");
    let cfg = config("");
    let s = serve(&pg, &cfg, &[]);
    run(async {
        let (b0, _) = balance(&s, &name).await;
        let stop = Arc::new(AtomicBool::new(false));
        let url = s.url("/v1/chat/completions");
        let load = tokio::spawn(clients(url, key.clone(), 6, stop.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let restarted = tokio::task::spawn_blocking(move || {
            // Without a log file, the restarted server writes to pg_ctl's stdout: that
            // pipe would stay open as long as it runs.
            Command::new(pg_ctl)
                .args(["restart", "-m", "fast", "-w", "-t", "60"])
                .stdout(std::process::Stdio::null())
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            restarted.status.success(),
            "pg_ctl restart: {}",
            String::from_utf8_lossy(&restarted.stderr)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::SeqCst);
        let seen = load.await.unwrap();
        let answered: Vec<&Seen> = seen.iter().filter(|r| r.status == 200).collect();
        for r in &seen {
            assert!(
                r.status == 200
                    || r.status == 503 && r.code.as_deref() == Some("ledger_unavailable"),
                "{r:?}"
            );
        }
        eprintln!(
            "{} requests through the restart: {} answered, {} refused with 503",
            seen.len(),
            answered.len(),
            seen.len() - answered.len()
        );
        let after = send(
            s.url("/v1/chat/completions"),
            key.clone(),
            body("test/paid", 12),
            false,
        )
        .await;
        assert_eq!(after.status, 200, "not served after the restart: {after:?}");
        let charged: i64 = answered.iter().map(|r| r.cost).sum::<i64>() + after.cost;
        let (b1, reserved) = settled(&s, &name).await;
        assert_eq!(reserved, 0);
        assert_eq!(
            b0 - b1,
            charged,
            "the balance fell by exactly the answers' costs"
        );
    });
}

#[test]
fn an_upstream_reset_mid_answer_is_an_error_and_costs_nothing() {
    let upstream = Resetter::start();
    let cfg = temp_path("reset", "toml");
    std::fs::write(
        &cfg,
        format!(
            "[[models]]\nid = \"up/reset\"\ninput_per_million = \"1000\"\n\
             output_per_million = \"2000\"\ncontext_length = 4096\n\
             [[models.backends]]\nurl = \"{}\"\nmodel = \"reset-mid\"\n",
            upstream.base()
        ),
    )
    .unwrap();
    let ledger = temp_db("reset");
    let db = ledger.sqlite_url();
    let key = account(&db, "reset", "1.00");
    let s = Server::start(&args(&db, &cfg, &[]));
    run(async {
        let (b0, _) = balance(&s, "reset").await;
        let mut req = json!({
            "model": "up/reset",
            "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 50,
            "stream": true,
        });
        let r = chat(&s, Some(&key), req.clone()).await;
        assert_eq!(r.status(), 200);
        let text = tokio::time::timeout(BOUND, r.text())
            .await
            .expect("the broken stream hung")
            .unwrap();
        let events = sse_events(&text);
        assert!(!events.iter().any(|e| e == "[DONE]"), "{text}");
        let chunks: Vec<Value> = events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let (last, passed) = chunks.split_last().expect("events");
        assert_eq!(last["error"]["code"], "upstream_error", "{text}");
        assert_eq!(last["error"]["type"], "server_error", "{text}");
        let content: String = passed
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(
            content, "one two ",
            "what came before the reset is passed on"
        );

        req["stream"] = json!(false);
        let r = chat(&s, Some(&key), req).await;
        assert_eq!(r.status(), 502);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "upstream_error", "{e}");

        // Neither is charged; both are recorded as errors.
        assert_eq!(settled(&s, "reset").await, (b0, 0));
        let rows: Value = client()
            .get(s.url("/v1/user/requests"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = rows["data"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        for row in rows {
            assert_eq!(
                (&row["status"], micros(&row["cost"])),
                (&json!("error"), 0),
                "{row}"
            );
        }
    });
}

/// One request on an open raw connection: `method`, `path`, a JSON body and a key.
fn raw_request(c: &mut TcpStream, method: &str, path: &str, key: &str, body: &Value) -> String {
    let body = body.to_string();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    c.write_all((head + &body).as_bytes()).unwrap();
    read_response(c)
}

/// Waits until the server's port refuses connections.
fn refused(port: u16) {
    let deadline = Instant::now() + BOUND;
    while let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
        drop(c);
        assert!(Instant::now() < deadline, "still accepting connections");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CLI's `usage` row of `account` on `model`: (requests, cost in micro-units).
fn usage_row(db: &str, account: &str, model: &str) -> (i64, i64) {
    let out = cli(db, &["usage"]);
    let line = out
        .lines()
        .find(|l| l.split_whitespace().take(2).eq([account, model]))
        .unwrap_or_else(|| panic!("no usage of {account} on {model}: {out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    (
        cols[2].parse().unwrap(),
        micros(&Value::String(cols[cols.len() - 1].to_owned())),
    )
}

#[test]
fn sigterm_drains_requests_in_flight_and_refuses_new_ones() {
    let ledger = temp_db("drain");
    let db = ledger.sqlite_url();
    let key = account(&db, "drain", "10.00");
    let cfg = config("");
    let mut s = serve(&db, &cfg, &[]);
    let (b0, _) = account_state(&db, "drain");
    let charged = run_returning(async {
        let (prompt, first) = long_prompt(&s, &key).await;
        // A connection kept alive from before the signal.
        let mut kept = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
        kept.set_read_timeout(Some(BOUND)).unwrap();
        let health = raw_request(&mut kept, "GET", "/health", &key, &json!({}));
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");

        let max = 200;
        let running = long_requests(&s, &key, 4, max);
        held(&s, "drain", 4 * (prompt * IN + i64::from(max) * OUT)).await;
        s.signal("TERM");
        refused(s.port());
        // A request on the kept connection: refused, and the connection closed.
        let answer = raw_request(
            &mut kept,
            "POST",
            "/v1/chat/completions",
            &key,
            &body("test/paid", 4),
        );
        let lower = answer.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 503"), "{answer}");
        assert!(
            lower.contains("\r\nretry-after: ") && lower.contains("\r\nconnection: close"),
            "{answer}"
        );
        assert!(answer.contains("\"shutting_down\""), "{answer}");
        assert_eq!(
            kept.read(&mut [0u8; 1]).unwrap_or(0),
            0,
            "the connection stays open"
        );

        let mut charged = first;
        for t in running {
            let seen = t.await.unwrap();
            assert_eq!(
                seen.status, 200,
                "a request in flight was not finished: {seen:?}"
            );
            charged += seen.cost;
        }
        charged
    });
    assert!(s.exit_status(BOUND).success());
    let (b1, reserved) = account_state(&db, "drain");
    assert_eq!(reserved, 0);
    assert_eq!(
        b0 - b1,
        charged,
        "the balance fell by exactly the answers' costs"
    );
    assert_eq!(
        usage_row(&db, "drain", "test/paid"),
        (5, charged),
        "each admitted request recorded once, the refused one not at all"
    );
}

#[test]
fn sigterm_cuts_what_outlasts_the_grace_and_records_it_before_exiting() {
    let stub = Stub::start();
    let cfg = temp_path("grace", "toml");
    let model = |id: &str, name: &str| {
        format!(
            "[[models]]\nid = \"{id}\"\ninput_per_million = \"1000\"\n\
             output_per_million = \"2000\"\ncontext_length = 4096\ntokenizer = \"{MODEL}\"\n\
             [[models.backends]]\nurl = \"{}\"\nmodel = \"{name}\"\n",
            stub.base()
        )
    };
    std::fs::write(&cfg, model("up/slow", "slow") + &model("up/hang", "hang")).unwrap();
    let ledger = temp_db("grace");
    let db = ledger.sqlite_url();
    let key = account(&db, "grace", "1.00");
    let mut s = Server::start(&args(&db, &cfg, &["--shutdown-grace-secs", "1"]));
    let (b0, _) = account_state(&db, "grace");
    let started = Instant::now();
    run(async {
        let req = |model: &str, stream: bool| {
            json!({"model": model, "messages": [{"role": "user", "content": "Tick."}],
                "max_tokens": 100, "stream": stream})
        };
        // A stream of 30 ticks 200 ms apart, and an answer the upstream holds for 60 s.
        let r = chat(&s, Some(&key), req("up/slow", true)).await;
        assert_eq!(r.status(), 200);
        let mut stream = r.bytes_stream();
        let mut text = String::new();
        while !text.contains("tick") {
            text += &String::from_utf8_lossy(&stream.next().await.unwrap().unwrap());
        }
        let hanging = tokio::spawn(
            client()
                .post(s.url("/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&req("up/hang", false))
                .send(),
        );
        while stub.chats().len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.signal("TERM");
        while let Some(Ok(b)) = stream.next().await {
            text += &String::from_utf8_lossy(&b);
        }
        assert!(
            !text.contains("[DONE]"),
            "the stream outlasting the grace was not cut: {text}"
        );
        let hung = hanging.await.unwrap();
        assert!(hung.is_err(), "the held answer was not cut: {hung:?}");
    });
    assert!(s.exit_status(BOUND).success());
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the shutdown waited for the 60 s answer"
    );
    let (b1, reserved) = account_state(&db, "grace");
    assert_eq!(
        reserved, 0,
        "the cut requests were not settled before the exit"
    );
    let (requests, cost) = usage_row(&db, "grace", "up/slow");
    assert_eq!(requests, 1);
    assert!(cost > 0, "the cut stream is billed for what it passed on");
    assert_eq!(usage_row(&db, "grace", "up/hang"), (1, 0));
    assert_eq!(b0 - b1, cost);
}
