//! `tokenfab bench`: the speed figures the engine issues are judged by.
//!
//! - `tokenfab bench [engine] --model X`: prompt-processing and decode tokens/s of the
//!   engine on one model (N-token prompt then M greedy tokens). It drives the model directly
//!   (no HTTP, no scheduler), so it measures the forward pass.
//! - `tokenfab bench http --url http://127.0.0.1:PORT/v1`: a load generator for any
//!   OpenAI-compatible server: concurrent streaming chat requests, aggregate generated
//!   tokens/s and time to first token. It speaks only the public API, so the same code
//!   measures tokenfab and the reference (`llama-server`) and the two figures compare.
//! - `tokenfab bench proxy`: the latency `tokenfab serve` adds in front of an upstream
//!   that answers at once (see `proxy_bench.rs`).
//! - `tokenfab bench bandwidth`: the machine's streaming read rate, which with the engine
//!   bench's bytes read per token gives decode's physical limit (`bandwidth_bench.rs`).
//! - `tokenfab bench embed --input texts.json`: sentences/s of an embedding model, in the
//!   batches sentence-transformers takes (`embed_bench.rs`).
//!
//! Both report the machine's load average: on 2 cores, another busy process halves the
//! figures, and a number without that context misleads. `--json` prints one JSON object
//! instead of the table, for `bench/run.sh`, which compares the two servers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::model::SeqInput;
use tokenfab_engine::sampler::argmax;
use tokenfab_models::{DEFAULT_MODEL, ModelSpec, default_cache_dir};
use tokenfab_upstream::http::{Client, Origin, Response, success};
use tokenfab_upstream::sse::Events;

/// `tokenfab bench`: with no subcommand, the engine bench, so that the form the README
/// and the issues have always used (`tokenfab bench --model X`) keeps working.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Prompt and decode speed of the engine on a model (the default).
    Engine(EngineArgs),
    /// Concurrent streaming chat requests against an OpenAI-compatible server on loopback.
    Http(HttpArgs),
    /// The latency `tokenfab serve` adds in front of an instant upstream.
    Proxy(crate::proxy_bench::ProxyArgs),
    /// The machine's streaming read bandwidth: the limit of single-stream decode.
    Bandwidth(crate::bandwidth_bench::BandwidthArgs),
    /// Sentences per second of an embedding model on a file of texts.
    Embed(crate::embed_bench::EmbedArgs),
}

#[derive(Args)]
struct EngineArgs {
    /// Model: catalog id, local path, or hf: spec.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Generated tokens after the prompt.
    #[arg(long, default_value_t = 128)]
    generate: usize,
    /// Math threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[arg(long, env = "TOKENFAB_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

/// The seed page's question: a realistic chat request, short prompt, long answer.
const DEFAULT_QUESTION: &str = "奥运会的传奇名将有哪些?";

#[derive(Args)]
struct HttpArgs {
    /// The server's base URL, ending in `/v1`. Loopback only: this is a load generator,
    /// meant for a server started for the measurement, not for someone else's.
    #[arg(long, default_value = "http://127.0.0.1:8000/v1")]
    url: String,
    /// Model id to request (default: the first one `GET /models` lists).
    #[arg(long, short)]
    model: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Requests in all (default: one per concurrent stream). Bounded: at most 10000.
    #[arg(long)]
    requests: Option<usize>,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// The user message of each request.
    #[arg(long, default_value = DEFAULT_QUESTION)]
    prompt: String,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Request i is sent with seed + i: reproducible, yet not 16 copies of one answer.
    #[arg(long, default_value_t = 42)]
    seed: i64,
    /// Rounds of warm-up before the measurement, not counted: each sends `concurrency`
    /// requests at once, so that first-use costs at the measured load (page faults of the
    /// weights and of the servers' caches, lazy allocations) stay out of it.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Seconds a request may take before the run fails.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// API key sent as `Authorization: Bearer …` (a server with keys turned on).
    #[arg(long, env = "TOKENFAB_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A JSON Schema file: every request asks for `response_format: {"type":
    /// "json_schema", ...}` with it (structured outputs, which llama-server takes too).
    #[arg(long)]
    json_schema: Option<std::path::PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        None => run_engine(args.engine),
        Some(BenchCommand::Engine(e)) => run_engine(e),
        Some(BenchCommand::Http(h)) => run_http(h),
        Some(BenchCommand::Proxy(p)) => crate::proxy_bench::run(p),
        Some(BenchCommand::Bandwidth(b)) => crate::bandwidth_bench::run(b),
        Some(BenchCommand::Embed(e)) => crate::embed_bench::run(e),
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_engine(args: EngineArgs) -> anyhow::Result<()> {
    let spec: ModelSpec = args.model.parse()?;
    let resolved = spec.resolve(
        &args.cache_dir.clone().unwrap_or_else(default_cache_dir),
        true,
    )?;
    let loaded = LoadedModel::load(&resolved.path, None, None)?;
    let model = &loaded.model;
    anyhow::ensure!(
        args.prompt + args.generate <= loaded.context_length(),
        "prompt + generate ({}) exceeds the context window ({})",
        args.prompt + args.generate,
        loaded.context_length()
    );
    // A real text prompt, repeated to the wanted length.
    let text = "The history of the Olympic Games goes back to ancient Greece, where athletes competed \
                in running, wrestling and chariot racing. ";
    let mut prompt = Vec::new();
    while prompt.len() < args.prompt {
        prompt.extend(loaded.tokenizer.encode(text, false, false));
    }
    prompt.truncate(args.prompt);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.max(1))
        .build()
        .context("thread pool")?;

    let load_before = load_average();
    if !args.json {
        println!("model: {} ({})", resolved.id, resolved.path.display());
        println!(
            "threads: {}, prompt: {} tokens, generate: {} tokens, runs: {}",
            args.threads, args.prompt, args.generate, args.runs
        );
        println!("load average before: {load_before}");
    }
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut scratch = model.new_scratch();
    for _ in 0..args.runs.max(1) {
        let mut kv = model.new_kv_cache();
        let t0 = Instant::now();
        let logits =
            pool.install(|| model.forward(&mut [SeqInput::last(&prompt, &mut kv)], &mut scratch))?;
        pp.push(args.prompt as f64 / t0.elapsed().as_secs_f64());
        let mut next = argmax(&logits[0]);
        let t1 = Instant::now();
        for _ in 0..args.generate {
            let logits = pool
                .install(|| model.forward(&mut [SeqInput::last(&[next], &mut kv)], &mut scratch))?;
            next = argmax(&logits[0]);
        }
        tg.push(args.generate as f64 / t1.elapsed().as_secs_f64());
    }
    let (pp, tg) = (median(pp), median(tg));
    if args.json {
        let out = json!({
            "model": resolved.id,
            "path": resolved.path.display().to_string(),
            "threads": args.threads,
            "prompt_tokens": args.prompt,
            "generated_tokens": args.generate,
            "runs": args.runs,
            "prompt_tokens_per_s": pp,
            "decode_tokens_per_s": tg,
            "bytes_per_token": model.streamed_bytes(),
            "load_before": load_before,
            "load_after": load_average(),
        });
        println!("{out}");
        return Ok(());
    }
    println!("| figure | tokens/s |");
    println!("|---|---|");
    println!("| prompt processing ({} tokens) | {pp:.1} |", args.prompt);
    println!(
        "| decode after {} tokens ({} tokens) | {tg:.1} |",
        args.prompt, args.generate
    );
    println!(
        "weights read per decoded token: {:.1} MiB",
        model.streamed_bytes() as f64 / (1 << 20) as f64
    );
    println!("load average after: {}", load_average());
    Ok(())
}

/// Refuses anything but plain HTTP to this machine: a load generator pointed elsewhere is
/// a denial of service, and the figures only mean something on the machine being measured.
fn check_loopback(url: &str) -> anyhow::Result<Origin> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .with_context(|| format!("`{url}`: only http:// to loopback is measured"))?;
    let origin = Origin::parse(url).map_err(anyhow::Error::msg)?;
    // The host as `Origin::parse` reads it (which has checked the URL's syntax): the
    // authority before the path, less its port, less an IPv6 address's brackets.
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => h,
        _ => authority,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    anyhow::ensure!(
        loopback,
        "`{url}`: the load generator only talks to loopback (127.0.0.1, ::1, localhost)"
    );
    Ok(origin)
}

/// The longest answer read whole (the model list, an error's body).
const MAX_ANSWER: usize = 1 << 20;

/// `fut`, failed when it takes longer than `limit`: a stuck server must not hang the run.
async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no complete answer within {limit:?}"))?
}

/// Where the requests go, and with which key.
struct Server {
    origin: Origin,
    api_key: Option<String>,
    /// Per request, from connecting to the answer's end.
    timeout: Duration,
}

impl Server {
    /// A client with a pool of its own, for one request, so that each request opens a
    /// connection and closes it at its end: a loopback connect costs microseconds, the
    /// same on both servers, and no idle kept-alive connection holds one of llama-server's
    /// HTTP threads (or races its closing) between requests.
    fn client(&self) -> anyhow::Result<Client> {
        Client::new(
            self.origin.clone(),
            self.api_key.as_deref(),
            self.timeout,
            None,
        )
        .map_err(anyhow::Error::msg)
        .context("HTTP client")
    }
}

/// What every request of a run shares.
struct HttpJob {
    server: Server,
    /// `{base}/chat/completions`, for messages.
    chat_url: String,
    model: String,
    prompt: String,
    max_tokens: usize,
    temperature: f32,
    /// `response_format`, when the run constrains the answers.
    response_format: Option<Value>,
}

/// What one request measured.
struct Sample {
    /// From sending the request to the first chunk that carried generated text: a role-only
    /// first chunk, which a server may send before computing anything, does not count.
    ttft: Option<Duration>,
    total: Duration,
    /// Generated tokens: the server's `usage.completion_tokens`, or, when it sent none, the
    /// chunks that carried text (a chunk may hold several tokens or none, hence the
    /// preference). Models stop at end-of-turn before `max_tokens`, so neither server is
    /// assumed to have generated `max_tokens`.
    tokens: usize,
    from_usage: bool,
    finish_reason: Option<String>,
}

/// One streaming chat request, read to `[DONE]`, within the run's per-request timeout.
async fn one_request(job: &HttpJob, seed: i64) -> anyhow::Result<Sample> {
    let what = format!("POST {}", job.chat_url);
    within(job.server.timeout, &what, stream_request(job, seed, &what)).await
}

async fn stream_request(job: &HttpJob, seed: i64, what: &str) -> anyhow::Result<Sample> {
    let mut body = json!({
        "model": job.model,
        "messages": [{"role": "user", "content": job.prompt}],
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": job.max_tokens,
        "temperature": job.temperature,
        "seed": seed,
    });
    if let Some(rf) = &job.response_format {
        body["response_format"] = rf.clone();
    }
    let t0 = Instant::now();
    let Response {
        status, mut body, ..
    } = job
        .server
        .client()?
        .post(
            "chat/completions",
            body.to_string().as_bytes(),
            t0 + job.server.timeout,
        )
        .await
        .context(what.to_owned())?;
    if !success(status) {
        let text = body.bytes(MAX_ANSWER).await.unwrap_or_default();
        anyhow::bail!("{what}: {status}: {}", String::from_utf8_lossy(&text));
    }
    let mut sample = Sample {
        ttft: None,
        total: Duration::ZERO,
        tokens: 0,
        from_usage: false,
        finish_reason: None,
    };
    let mut text_chunks = 0;
    let mut usage_tokens = None;
    let mut done = false;
    let mut events = Events::default();
    let mut on_event = |data: String| -> anyhow::Result<()> {
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .with_context(|| format!("a stream chunk is not JSON: {data}"))?;
        if let Some(err) = v.get("error") {
            anyhow::bail!("the server streamed an error: {err}");
        }
        for choice in v["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            let has_text = ["content", "reasoning_content"]
                .iter()
                .any(|k| delta[k].as_str().is_some_and(|s| !s.is_empty()));
            if has_text {
                text_chunks += 1;
                sample.ttft.get_or_insert_with(|| t0.elapsed());
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                sample.finish_reason = Some(r.to_owned());
            }
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage_tokens = Some(n as usize);
        }
        Ok(())
    };
    while let Some(bytes) = body.chunk().await.context("reading the stream")? {
        for data in events.push(&bytes)? {
            on_event(data)?;
        }
    }
    if let Some(data) = events.finish()? {
        on_event(data)?;
    }
    sample.total = t0.elapsed();
    anyhow::ensure!(done, "the stream ended without `data: [DONE]`");
    (sample.tokens, sample.from_usage) = match usage_tokens {
        Some(n) => (n, true),
        None => (text_chunks, false),
    };
    Ok(sample)
}

/// Nearest-rank percentile of sorted values (with 8 samples, p99 is the slowest).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn run_http(args: HttpArgs) -> anyhow::Result<()> {
    let origin = check_loopback(&args.url)?;
    let requests = args.requests.unwrap_or(args.concurrency).clamp(1, 10_000);
    let concurrency = args.concurrency.clamp(1, requests);
    // One thread: the generator shares the cores with the server it measures, and parsing
    // a few hundred chunks a second needs no more.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(http_main(args, origin, requests, concurrency))
}

async fn http_main(
    args: HttpArgs,
    origin: Origin,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/').to_owned();
    let server = Server {
        origin,
        api_key: args.api_key.clone(),
        timeout: Duration::from_secs(args.timeout),
    };
    let model = match args.model.clone() {
        Some(m) => m,
        None => {
            let what = format!("GET {base}/models");
            let models: Value = within(server.timeout, &what, async {
                let deadline = Instant::now() + server.timeout;
                let r = server
                    .client()?
                    .get("models", deadline)
                    .await
                    .context(what.clone())?;
                anyhow::ensure!(success(r.status), "{what}: {}", r.status);
                let bytes = r.body.bytes(MAX_ANSWER).await.context(what.clone())?;
                serde_json::from_slice(&bytes).with_context(|| format!("{what}: not JSON"))
            })
            .await?;
            models["data"][0]["id"]
                .as_str()
                .with_context(|| format!("GET {base}/models lists no model; pass --model"))?
                .to_owned()
        }
    };
    let job = Arc::new(HttpJob {
        server,
        chat_url: format!("{base}/chat/completions"),
        model,
        prompt: args.prompt.clone(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        response_format: match &args.json_schema {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let schema: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                Some(json!({"type": "json_schema",
                    "json_schema": {"name": "bench", "schema": schema, "strict": true}}))
            }
        },
    });
    for round in 0..args.warmup {
        let mut warm = tokio::task::JoinSet::new();
        for i in 0..concurrency {
            let (job, seed) = (
                job.clone(),
                args.seed.wrapping_sub(1 + (round * concurrency + i) as i64),
            );
            warm.spawn(async move { one_request(&job, seed).await });
        }
        while let Some(r) = warm.join_next().await {
            r.context("a warm-up task panicked")?
                .context("warm-up request")?;
        }
    }

    let load_before = load_average();
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (job, next, seed) = (job.clone(), next.clone(), args.seed);
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return anyhow::Ok(samples);
                }
                samples.push(one_request(&job, seed.wrapping_add(i as i64)).await?);
            }
        });
    }
    let mut samples = Vec::with_capacity(requests);
    while let Some(r) = workers.join_next().await {
        samples.extend(r.context("a request task panicked")??);
    }
    let wall = t0.elapsed().as_secs_f64();

    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let from_usage = samples.iter().all(|s| s.from_usage);
    let mut ttft: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.ttft)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    ttft.sort_by(f64::total_cmp);
    // Per-stream decode speed: tokens after the first over the time after the first.
    let mut stream_tps: Vec<f64> = samples
        .iter()
        .filter_map(|s| {
            let after = s.total.checked_sub(s.ttft?)?.as_secs_f64();
            (s.tokens > 1 && after > 0.0).then(|| (s.tokens - 1) as f64 / after)
        })
        .collect();
    stream_tps.sort_by(f64::total_cmp);
    let stopped = samples
        .iter()
        .filter(|s| s.finish_reason.as_deref() == Some("stop"))
        .count();
    let aggregate = tokens as f64 / wall;
    let (p50, p99) = (percentile(&ttft, 50.0), percentile(&ttft, 99.0));
    let stream_p50 = percentile(&stream_tps, 50.0);
    if args.json {
        let out = json!({
            "url": base,
            "model": job.model,
            "concurrency": concurrency,
            "requests": requests,
            "max_tokens": args.max_tokens,
            "json_schema": args.json_schema.is_some(),
            "wall_s": wall,
            "generated_tokens": tokens,
            "tokens_counted_by": if from_usage { "usage" } else { "chunks" },
            "finished_by_stop": stopped,
            "aggregate_tokens_per_s": aggregate,
            "ttft_ms_p50": p50,
            "ttft_ms_p99": p99,
            "stream_tokens_per_s_p50": stream_p50,
            "load_before": load_before,
            "load_after": load_average(),
        });
        println!("{out}");
        return Ok(());
    }
    println!("server: {base}, model: {}", job.model);
    println!(
        "{requests} streaming requests, {concurrency} at a time, max_tokens {}, temperature {}",
        args.max_tokens, args.temperature
    );
    println!("load average before: {load_before}");
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| generated tokens ({}) | {tokens} ({:.1} per request, {stopped} of {requests} ended by stop) |",
        if from_usage { "usage" } else { "chunks" },
        tokens as f64 / requests as f64
    );
    println!("| wall time | {wall:.2} s |");
    println!("| aggregate generated tokens/s | {aggregate:.1} |");
    println!("| time to first token p50 | {p50:.0} ms |");
    println!("| time to first token p99 | {p99:.0} ms |");
    println!("| per-stream decode tokens/s p50 | {stream_p50:.1} |");
    println!("load average after: {}", load_average());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_http_is_measured() {
        for ok in [
            "http://127.0.0.1:8000/v1",
            "http://localhost:8000/v1",
            "http://[::1]:8000/v1",
            "HTTP://LOCALHOST/v1/",
        ] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8000/v1",
            "http://example.invalid/v1",
            "https://127.0.0.1/v1",
            "not a url",
            // Hosts that only start like loopback.
            "http://127.0.0.1:8000@example.invalid/v1",
            "http://localhost.example.invalid/v1",
            "http://[::]:8000/v1",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=8).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 4.0);
        assert_eq!(percentile(&v, 99.0), 8.0);
        assert_eq!(percentile(&[5.0], 50.0), 5.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn engine_bench_is_the_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = Cli::try_parse_from(["bench", "--model", "m", "--json"]).unwrap();
        assert!(cli.bench.command.is_none());
        assert_eq!(cli.bench.engine.model, "m");
        let cli = Cli::try_parse_from(["bench", "http", "--concurrency", "8"]).unwrap();
        assert!(matches!(cli.bench.command, Some(BenchCommand::Http(ref h)) if h.concurrency == 8));
    }
}
