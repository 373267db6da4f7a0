//! `tokenfab bench proxy`: the latency tokenfab adds in front of an upstream.
//!
//! An upstream that answers at once (a fixed chat completion, served by this process on
//! its own thread) is measured twice at the same fixed request rate, open loop: directly,
//! then through a `tokenfab serve` child process that routes an upstream model to it, with
//! an API key, rate limits and the ledger on (a free model: nothing is reserved). Each
//! request is its own task, started on schedule whatever the earlier ones are doing, so a
//! slow answer never delays the next request (no coordinated omission); its latency runs
//! from its send to the end of its answer (the timer's millisecond ticks would otherwise
//! add up to a millisecond of the generator's own to both sides). Added latency is the
//! difference of the two sides' percentiles. The sides alternate over `--rounds` rounds and
//! each keeps its best percentiles, as `bench/run.sh` does: on two shared cores a stray
//! process (or the hypervisor) can stall either side for milliseconds. The added latency
//! of each round (its two runs, a few seconds apart) is printed too, with the median over
//! rounds, so that a reader sees the spread the best figures hide. The server's CPU time
//! per request, read from `/proc`, is the figure noise moves least. A closed-loop run then
//! finds the requests/s tokenfab passes with `--concurrency` requests in flight. Loopback
//! only, bounded request counts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Json;
use axum::routing::{get, post};
use clap::Args;
use serde_json::{Value, json};
use tokenfab_upstream::http::{Client, Origin, success};
use tokenfab_upstream::pool::mix;

#[derive(Args)]
pub struct ProxyArgs {
    /// Requests per second of the open-loop runs.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Requests per open-loop run (at most 100000).
    #[arg(long, default_value_t = 10000)]
    requests: usize,
    /// Alternating rounds of the two open-loop runs; each side keeps its best.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Poisson arrivals (exponential gaps from a fixed seed, the same every run) instead
    /// of evenly spaced ones: the bursts real traffic has.
    #[arg(long)]
    poisson: bool,
    /// Requests in flight in the closed-loop throughput run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// The instant upstream's answer.
fn completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    })
}

/// Serves the instant upstream on its own thread and runtime; returns its port.
fn start_upstream() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let app = axum::Router::new()
                .route(
                    "/v1/chat/completions",
                    post(|Json(body): Json<Value>| async move {
                        Json(completion(body["model"].as_str().unwrap_or("echo")))
                    }),
                )
                .route(
                    "/v1/models",
                    get(|| async { Json(json!({"object": "list", "data": []})) }),
                );
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await.expect("upstream");
        });
    });
    Ok(port)
}

/// The tokenfab under test, killed on drop.
struct Front {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tokenfab(dir: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let db = format!("sqlite://{}", dir.join("ledger.db").display());
    Command::new(std::env::current_exe()?)
        .args(args)
        .args(["--database", &db])
        .env("RUST_LOG", "warn")
        .output()
        .context("cannot run tokenfab")
}

/// Starts `tokenfab serve` routing `bench/echo` to the upstream; returns it and an API key.
fn start_front(upstream: u16) -> anyhow::Result<(Front, u16, String)> {
    let dir = std::env::temp_dir().join(format!("tokenfab-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("tokenfab.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nid = \"bench/echo\"\n[[models.backends]]\nurl = \"http://127.0.0.1:{upstream}/v1\"\nmodel = \"echo\"\n[limits.default]\nrpm = 10000000\ntpm = 1000000000\n"
        ),
    )?;
    let out = tokenfab(&dir, &["accounts", "create", "bench"])?;
    anyhow::ensure!(
        out.status.success(),
        "cannot create the bench account: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tokenfab(&dir, &["keys", "create", "--account", "bench"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("sk-"))
        .context("no key in `tokenfab keys create`'s output")?
        .to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let db = format!("sqlite://{}", dir.join("ledger.db").display());
    // Logging as a default `serve` logs (every request at info), into a file.
    let log = dir.join("serve.log");
    let child = Command::new(std::env::current_exe()?)
        .args(["serve", "--port", &port.to_string(), "--config"])
        .arg(&config)
        .args(["--database", &db])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("cannot start tokenfab serve")?;
    let front = Front { child, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "tokenfab serve did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((front, port, key))
}

/// CPU seconds (user and system) a process has used so far, from `/proc` (Linux only);
/// its change over a run divided by the run's requests is the CPU each request cost, a
/// figure the scheduling noise of shared cores does not move the way it moves latency.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // The kernel's USER_HZ, 100 on every Linux architecture tokenfab builds for.
    Some(ticks / 100.0)
}

/// One run's latencies (ms, sorted) and its wall time.
struct Run {
    latencies: Vec<f64>,
    errors: usize,
    wall: Duration,
}

impl Run {
    fn pct(&self, p: f64) -> f64 {
        crate::bench::percentile(&self.latencies, p)
    }

    fn rate(&self) -> f64 {
        (self.latencies.len() + self.errors) as f64 / self.wall.as_secs_f64()
    }
}

/// One side's best over rounds.
#[derive(Default)]
struct Best {
    p50: f64,
    p99: f64,
    rps: f64,
    errors: usize,
}

impl Best {
    fn add(&mut self, r: &Run) {
        let first = self.rps == 0.0;
        let better = |old: f64, new: f64| if first { new } else { old.min(new) };
        self.p50 = better(self.p50, r.pct(50.0));
        self.p99 = better(self.p99, r.pct(99.0));
        self.rps = self.rps.max(r.rate());
        self.errors += r.errors;
    }
}

/// The longest a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the API at `base` (`http://127.0.0.1:PORT/v1`), with a pool of its own:
/// each run starts with no connection open, as the other side's did.
fn client(base: &str, key: Option<&str>) -> anyhow::Result<Client> {
    let origin = Origin::parse(base).map_err(anyhow::Error::msg)?;
    Client::new(origin, key, REQUEST_TIMEOUT, None).map_err(anyhow::Error::msg)
}

fn body(model: &str) -> Vec<u8> {
    json!({"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1})
        .to_string()
        .into_bytes()
}

/// One chat completion, read whole; whether it succeeded in time.
async fn send(client: &Client, body: &[u8]) -> bool {
    let exchange = async {
        let deadline = std::time::Instant::now() + REQUEST_TIMEOUT;
        let r = client.post("chat/completions", body, deadline).await.ok()?;
        (success(r.status) && r.body.bytes(1 << 20).await.is_ok()).then_some(())
    };
    matches!(
        tokio::time::timeout(REQUEST_TIMEOUT, exchange).await,
        Ok(Some(()))
    )
}

/// When each of `n` requests is due, from the start, at `rate` per second.
fn schedule(rate: u32, n: usize, poisson: bool) -> Vec<Duration> {
    let rate = f64::from(rate.max(1));
    let mut at = 0.0;
    (0..n as u64)
        .map(|i| {
            let due = Duration::from_secs_f64(at);
            at += if poisson {
                // Uniform in (0, 1) from a fixed sequence, then an exponential gap.
                let u = ((mix(i) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                -u.ln() / rate
            } else {
                1.0 / rate
            };
            due
        })
        .collect()
}

/// Requests sent on `schedule`, each timed from its send. The schedule is kept by
/// a thread of its own, whose sleeps are exact to tens of microseconds: the runtime's
/// timer ticks in milliseconds, and at 2000 requests/s would send them in pairs, each
/// pair's second queued behind its first (a burst the rate does not ask for).
async fn open_loop(client: Client, body: Vec<u8>, schedule: Vec<Duration>) -> Run {
    let n = schedule.len();
    let body = Arc::new(body);
    let runtime = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        for at in schedule {
            std::thread::sleep((start + at).saturating_duration_since(Instant::now()));
            let (c, b) = (client.clone(), body.clone());
            let task = runtime.spawn(async move {
                let t = Instant::now();
                let ok = send(&c, &b).await;
                (ok, t.elapsed().as_secs_f64() * 1e3)
            });
            if tx.send(task).is_err() {
                return;
            }
        }
    });
    let mut results = Vec::with_capacity(n);
    while let Some(task) = rx.recv().await {
        results.push(task.await.unwrap_or((false, 0.0)));
    }
    summarize(results, start)
}

/// (success, latency in ms) per request.
fn summarize(results: Vec<(bool, f64)>, start: Instant) -> Run {
    let errors = results.iter().filter(|(ok, _)| !ok).count();
    let mut latencies: Vec<f64> = results
        .into_iter()
        .filter(|(ok, _)| *ok)
        .map(|(_, ms)| ms)
        .collect();
    latencies.sort_by(f64::total_cmp);
    Run {
        latencies,
        errors,
        wall: start.elapsed(),
    }
}

/// `n` requests, `concurrency` in flight at a time.
async fn closed_loop(client: Client, body: Vec<u8>, concurrency: usize, n: usize) -> Run {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = Arc::new(body);
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (c, b, next) = (client.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let t = Instant::now();
                    let ok = send(&c, &b).await;
                    out.push((ok, t.elapsed().as_secs_f64() * 1e3));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap_or_default());
    }
    summarize(all, start)
}

pub fn run(args: ProxyArgs) -> anyhow::Result<()> {
    let n = args.requests.clamp(100, 100_000);
    let upstream = start_upstream()?;
    let (front_proc, port, key) = start_front(upstream)?;
    let pid = front_proc.child.id();
    // The generator's own runtime: one thread, like a client process.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let direct_url = format!("http://127.0.0.1:{upstream}/v1");
    let front_url = format!("http://127.0.0.1:{port}/v1");
    let load = crate::bench::load_average();
    let rounds = args.rounds.clamp(1, 10);
    // The same send times for every run (the warm-ups use their start).
    let plan = schedule(args.rate, n, args.poisson);
    let warm_up = || plan[..200.min(n)].to_vec();
    let (direct, front, max, cpu, per_round) = rt.block_on(async {
        // Warm-up: connections, caches, the key cache.
        open_loop(client(&direct_url, None)?, body("echo"), warm_up()).await;
        open_loop(
            client(&front_url, Some(&key))?,
            body("bench/echo"),
            warm_up(),
        )
        .await;
        let (mut direct, mut front) = (Best::default(), Best::default());
        // Each round's added (p50, p99).
        let mut per_round = Vec::with_capacity(rounds);
        // tokenfab's CPU seconds over the open-loop runs through it.
        let mut cpu = Some(0.0);
        for _ in 0..rounds {
            let d = open_loop(client(&direct_url, None)?, body("echo"), plan.clone()).await;
            let before = cpu_seconds(pid);
            let f = open_loop(
                client(&front_url, Some(&key))?,
                body("bench/echo"),
                plan.clone(),
            )
            .await;
            per_round.push((f.pct(50.0) - d.pct(50.0), f.pct(99.0) - d.pct(99.0)));
            direct.add(&d);
            front.add(&f);
            cpu = cpu
                .zip(before.zip(cpu_seconds(pid)))
                .map(|(c, (b, a))| c + a - b);
        }
        let max = closed_loop(
            client(&front_url, Some(&key))?,
            body("bench/echo"),
            args.concurrency.clamp(1, 256),
            n,
        )
        .await;
        anyhow::Ok((direct, front, max, cpu, per_round))
    })?;
    anyhow::ensure!(
        direct.errors == 0 && front.errors == 0 && max.errors == 0,
        "failed requests: direct {}, through tokenfab {}, closed loop {}",
        direct.errors,
        front.errors,
        max.errors
    );
    let median = |p99: bool| {
        let v: Vec<f64> = per_round
            .iter()
            .map(|&(a, b)| if p99 { b } else { a })
            .collect();
        crate::bench::median(v)
    };
    // Microseconds of tokenfab's CPU per request through it.
    let cpu_us = cpu.map(|c| c * 1e6 / (n * rounds) as f64);
    let added = |p50: bool| {
        if p50 {
            front.p50 - direct.p50
        } else {
            front.p99 - direct.p99
        }
    };
    if args.json {
        println!(
            "{}",
            json!({
                "rate": args.rate, "requests": n, "rounds": rounds,
                "direct_ms": {"p50": direct.p50, "p99": direct.p99, "rps": direct.rps},
                "through_ms": {"p50": front.p50, "p99": front.p99, "rps": front.rps},
                "added_ms": {"p50": added(true), "p99": added(false)},
                "added_per_round_ms": per_round.iter().map(|&(a, b)| json!({"p50": a, "p99": b})).collect::<Vec<_>>(),
                "added_median_ms": {"p50": median(false), "p99": median(true)},
                "cpu_us_per_request": cpu_us,
                "closed_loop": {"concurrency": args.concurrency, "rps": max.rate(), "p50_ms": max.pct(50.0), "p99_ms": max.pct(99.0)},
                "load_before": load,
            })
        );
        return Ok(());
    }
    println!(
        "proxy overhead: {n} requests at {} req/s, open loop, best of {rounds} alternating rounds (load average before: {load})",
        args.rate
    );
    println!("| figure | direct | through tokenfab | added |");
    println!("|---|---|---|---|");
    println!(
        "| p50 latency, ms | {:.3} | {:.3} | {:.3} |",
        direct.p50,
        front.p50,
        added(true)
    );
    println!(
        "| p99 latency, ms | {:.3} | {:.3} | {:.3} |",
        direct.p99,
        front.p99,
        added(false)
    );
    println!(
        "| achieved requests/s | {:.0} | {:.0} | |",
        direct.rps, front.rps
    );
    let list: Vec<String> = per_round.iter().map(|r| format!("{:.3}", r.1)).collect();
    println!(
        "added p99 by round, ms: {} (median {:.3}; added p50 median {:.3})",
        list.join(", "),
        median(true),
        median(false)
    );
    if let Some(us) = cpu_us {
        println!("tokenfab CPU per request (user + system): {us:.0} µs");
    }
    println!(
        "closed loop, {} in flight: {:.0} requests/s through tokenfab (p50 {:.3} ms, p99 {:.3} ms)",
        args.concurrency,
        max.rate(),
        max.pct(50.0),
        max.pct(99.0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_keep_the_rate() {
        let even = schedule(2000, 1000, false);
        assert_eq!(even[0], Duration::ZERO);
        assert!(even.windows(2).all(|w| w[1] - w[0] == even[1] - even[0]));
        assert!((even[999].as_secs_f64() - 0.4995).abs() < 1e-9);
        // Poisson: the same every time, bursty, and at the asked rate on average.
        let p = schedule(2000, 20000, true);
        assert_eq!(p, schedule(2000, 20000, true));
        let gaps: Vec<f64> = p.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.0005).abs() < 0.000_02, "{mean}");
        // An exponential gap is shorter than half the mean about 39% of the time.
        let short = gaps.iter().filter(|&&g| g < 0.00025).count() as f64 / gaps.len() as f64;
        assert!((short - 0.393).abs() < 0.02, "{short}");
    }
}
