//! The `tokenfab` command: `serve` the API, `chat` with a model in the terminal, manage
//! `models`, `keys`, `accounts`, read `usage`, `bench` the engine.
//!
//! This crate is glue: configuration and flags in, the models crate resolves files, the
//! engine loads them, the platform keeps the ledger, the server serves them.

mod admin;
mod bandwidth_bench;
mod bench;
mod chat;
mod config;
mod embed_bench;
mod inspect;
mod proxy_bench;
mod registry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokenfab_engine::scheduler::SchedulerConfig;
use tokenfab_models::{DEFAULT_MODEL, ModelSpec, catalog, default_cache_dir};
use tokenfab_platform::store::Store;
use tokenfab_platform::{Platform, PlatformConfig};
use tokenfab_server::batch::{BatchConfig, Batches};
use tokenfab_server::{AppState, Limits};

use crate::config::{FileConfig, ModelConfig};
use crate::registry::{Loading, build_registry, terms};

#[derive(Parser)]
#[command(
    name = "tokenfab",
    version,
    about = "A self-hosted token factory: open models behind an OpenAI-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API (default: the built-in SmolLM2 on 127.0.0.1:8000).
    Serve(ServeArgs),
    /// Chat with a model in the terminal: the local engine (default: the built-in SmolLM2)
    /// or any OpenAI-compatible server (`--url`).
    Chat(chat::ChatArgs),
    /// List, fetch or verify models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Measure prompt and decode speed of the engine on a model.
    Bench(bench::BenchArgs),
    /// Create, list and revoke API keys.
    Keys {
        #[command(subcommand)]
        command: admin::KeysCommand,
        #[command(flatten)]
        db: admin::DbArgs,
    },
    /// Create accounts, top them up, show their balances.
    Accounts {
        #[command(subcommand)]
        command: admin::AccountsCommand,
        #[command(flatten)]
        db: admin::DbArgs,
    },
    /// Tokens and cost per account and model over a period (from the daily totals).
    Usage(admin::UsageArgs),
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// The built-in catalog and whether each model is cached.
    List(CacheArgs),
    /// Download a model into the cache (default: the built-in default model).
    Fetch {
        /// Catalog id, `hf:org/repo/file.gguf`, or a local path.
        model: Option<String>,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// What a GGUF file holds (architecture, size, context, weight types, template) and
    /// whether this build runs it, and if not, exactly why.
    Inspect {
        /// A GGUF file.
        file: PathBuf,
    },
    /// Re-hash a cached catalog model against its published SHA-256.
    Verify {
        model: Option<String>,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

#[derive(Args, Clone)]
struct CacheArgs {
    /// Where models are cached.
    #[arg(long, env = "TOKENFAB_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

impl CacheArgs {
    fn dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(default_cache_dir)
    }
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see the README's configuration reference).
    #[arg(long, short, env = "TOKENFAB_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "TOKENFAB_HOST")]
    host: Option<String>,
    #[arg(long, short, env = "TOKENFAB_PORT")]
    port: Option<u16>,
    /// Model to serve: a catalog id, a local GGUF path, or `hf:org/repo/file.gguf`.
    /// Replaces the config file's models.
    #[arg(long, short, env = "TOKENFAB_MODEL")]
    model: Option<String>,
    /// The id clients use for `--model` (default: derived from the source).
    #[arg(long)]
    model_id: Option<String>,
    /// Math threads (default: all cores).
    #[arg(long, env = "TOKENFAB_THREADS")]
    threads: Option<usize>,
    /// Cap on the context window.
    #[arg(long)]
    context_length: Option<usize>,
    /// Ceiling on generated tokens per choice; larger requests are cut with "length".
    #[arg(long, env = "TOKENFAB_MAX_OUTPUT_TOKENS")]
    max_output_tokens: Option<usize>,
    /// A Jinja chat template file replacing the model's own.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// A draft model for speculative decoding (same vocabulary, smaller): a catalog id, a
    /// local GGUF path, or `hf:org/repo/file.gguf`.
    #[arg(long)]
    draft: Option<String>,
    /// Split `<think>` thoughts into `reasoning_content` (default: detected from the
    /// chat template).
    #[arg(long)]
    reasoning: Option<bool>,
    /// The ledger database: `sqlite://PATH` or `postgres://USER@HOST/DB` (default: a
    /// SQLite file in the data directory).
    #[arg(long, env = "TOKENFAB_DATABASE_URL")]
    database: Option<String>,
    /// Keep rate-limit counters in this Redis (`redis://HOST:PORT/`), shared by replicas.
    #[arg(long, env = "TOKENFAB_REDIS_URL")]
    redis: Option<String>,
    /// This server's name in the ledger (default: host name and port); a restart under
    /// the same name releases what the previous run left reserved.
    #[arg(long, env = "TOKENFAB_INSTANCE")]
    instance: Option<String>,
    /// Turns on the `/admin` API, guarded by this key.
    #[arg(long, env = "TOKENFAB_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Open connections at most; past it, connections are answered 503 (default 1024).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Largest request head, request line and headers, in bytes (default 16384).
    #[arg(long)]
    max_header_bytes: Option<usize>,
    /// Seconds a client has to send a request's head (default 10).
    #[arg(long)]
    header_read_timeout_secs: Option<u64>,
    /// Longest silence, in seconds, inside a request body before a 408 (default 30).
    #[arg(long)]
    body_read_timeout_secs: Option<u64>,
    /// Seconds a kept-alive connection may wait for its next request (default 60).
    #[arg(long)]
    keep_alive_idle_secs: Option<u64>,
    /// Seconds a shutdown (SIGTERM) lets the requests in flight finish before it cuts
    /// them (default 20).
    #[arg(long)]
    shutdown_grace_secs: Option<u64>,
    /// Serve a non-loopback address although no API key exists (anyone who reaches it
    /// may use it).
    #[arg(long)]
    allow_open: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

/// `default` applies unless `RUST_LOG` says otherwise.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The chat's screen is the conversation: the server it may run inside logs only what
    // goes wrong.
    init_logging(match cli.command {
        Command::Chat(_) => "warn",
        _ => "info",
    });
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Chat(args) => chat::run(args),
        Command::Models { command } => models(command),
        Command::Bench(args) => bench::run(args),
        Command::Keys { command, db } => admin::keys(command, db),
        Command::Accounts { command, db } => admin::accounts(command, db),
        Command::Usage(args) => admin::usage(args),
    }
}

fn models(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List(cache) => {
            let dir = cache.dir();
            println!(
                "{:<40} {:<10} {:<7} {:>8}  {:<6} runs here",
                "id", "arch", "format", "size", "cached"
            );
            for e in catalog() {
                let spec: ModelSpec = e.id.parse()?;
                let cached = spec.is_cached(&dir);
                let encoder = tokenfab_engine::encoder::supports_architecture(e.architecture);
                let runs = if cached {
                    // The file itself, header only: its real tensor types and shapes (an
                    // encoder's configuration).
                    let file = e.cache_path(&dir);
                    let checked = if encoder {
                        tokenfab_engine::encoder::Encoder::config_of(&file).map(|_| ())
                    } else {
                        tokenfab_engine::gguf::GgufFile::open(&file)
                            .and_then(|g| tokenfab_engine::model::check(&g))
                    };
                    match checked {
                        Ok(()) => "yes".to_string(),
                        Err(why) => format!("no: {why}"),
                    }
                } else if tokenfab_engine::model::supports_architecture(e.architecture)
                    || encoder && tokenfab_engine::encoder::supports_architecture(e.architecture)
                {
                    "yes (by architecture; fetch to check the file)".to_string()
                } else {
                    format!("no: architecture `{}` is not supported", e.architecture)
                };
                println!(
                    "{:<40} {:<10} {:<7} {:>5} MB  {:<6} {runs}",
                    e.id,
                    e.architecture,
                    e.format,
                    e.size / 1_000_000,
                    if cached { "yes" } else { "no" }
                );
            }
            println!("cache: {}", dir.display());
            Ok(())
        }
        ModelsCommand::Inspect { file } => {
            print!("{}", inspect::report(&file)?);
            Ok(())
        }
        ModelsCommand::Fetch { model, cache } => {
            let spec: ModelSpec = model.as_deref().unwrap_or(DEFAULT_MODEL).parse()?;
            let r = spec.resolve(&cache.dir(), true)?;
            println!("{}", r.path.display());
            Ok(())
        }
        ModelsCommand::Verify { model, cache } => {
            let id = model.as_deref().unwrap_or(DEFAULT_MODEL);
            let entry = catalog()
                .iter()
                .find(|e| e.id.eq_ignore_ascii_case(id))
                .with_context(|| {
                    format!("`{id}` is not in the catalog; `tokenfab models list` shows it")
                })?;
            let spec: ModelSpec = entry.id.parse()?;
            let r = spec.resolve(&cache.dir(), true)?;
            tokenfab_models::verify(&r.path, entry)?;
            println!("{}: sha256 ok", r.path.display());
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let file_cfg = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let host = args
        .host
        .clone()
        .or(file_cfg.host.clone())
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = args.port.or(file_cfg.port).unwrap_or(8000);
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .or_else(|_| format!("[{host}]:{port}").parse())
        .with_context(|| format!("`{host}` is not an IP address to listen on"))?;
    let cache_dir = args
        .cache
        .cache_dir
        .clone()
        .or(file_cfg.cache_dir.clone())
        .unwrap_or_else(default_cache_dir);
    let threads = args.threads.or(file_cfg.threads).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });

    // `--model` replaces the config file's models; with neither, the default model.
    let from_flags = |source: &str| ModelConfig {
        id: args.model_id.clone(),
        source: Some(source.to_owned()),
        context_length: args.context_length,
        chat_template_file: args.chat_template.clone(),
        draft: args.draft.clone(),
        reasoning: args.reasoning,
        ..ModelConfig::default()
    };
    let (models, reloadable) = match &args.model {
        Some(source) => (vec![from_flags(source)], None),
        None if !file_cfg.models.is_empty() => (file_cfg.models.clone(), args.config.clone()),
        None => (vec![from_flags(DEFAULT_MODEL)], None),
    };
    // One HTTP worker per core (the engine computes on threads of its own): a gateway in
    // front of upstreams scales with the machine.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Whether keys exist decides whether this address may be served: asked before the
    // models load, so a refusal comes at once.
    let database_url = admin::database_url(args.database.as_deref(), &file_cfg)?;
    tracing::info!(database = %admin::redact(&database_url), "opening the ledger");
    let (store, secured) = rt
        .block_on(async {
            let store = Store::open(&database_url).await?;
            let secured = store.has_keys().await?;
            Ok::<_, tokenfab_platform::store::StoreError>((store, secured))
        })
        .with_context(|| format!("cannot open the ledger {}", admin::redact(&database_url)))?;
    if !secured && !addr.ip().is_loopback() && !args.allow_open {
        anyhow::bail!(
            "refusing to serve {addr} without API keys: anyone who reaches it could use it. \
             Create a key (`tokenfab keys create --account NAME`), or pass --allow-open"
        );
    }
    let how = Loading {
        cache_dir,
        threads,
        file_cfg: file_cfg.clone(),
    };
    // Before any engine starts: each registers its metrics once, with the recorder it
    // finds then.
    tokenfab_server::metrics::install();
    let registry = rt.block_on(async {
        // Upstream pools start their health probes on the runtime.
        build_registry(&models, &Vec::new(), &how)
    })?;
    let terms = terms(&file_cfg, &registry)?;
    let platform_cfg = PlatformConfig {
        redis_url: args.redis.clone().or(file_cfg.redis_url.clone()),
        limits_fail_open: file_cfg.rate_limits_fail_open.unwrap_or(false),
        instance: args
            .instance
            .clone()
            .or(file_cfg.instance.clone())
            .unwrap_or_else(|| format!("{}:{port}", admin::host_name())),
        tiers: terms.tiers,
        models: terms.models,
    };
    let admin_key = args.admin_key.clone().or(file_cfg.admin_key.clone());
    let limits = limits(&args, &file_cfg)?;
    warn_if_descriptors_short(limits.max_connections);

    let max_running = file_cfg
        .max_running
        .unwrap_or(SchedulerConfig::default().max_running);
    // Beside a SQLite ledger (the data directory by default), so that the files and their
    // records stay together.
    let files_dir = match &file_cfg.files_dir {
        Some(d) => d.clone(),
        None => database_url
            .strip_prefix("sqlite://")
            .and_then(|p| std::path::Path::new(p.split('?').next()?).parent())
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(admin::data_dir, PathBuf::from)
            .join("files"),
    };
    let batches = Batches::new(BatchConfig {
        max_file_bytes: file_cfg.max_file_bytes.unwrap_or(100 << 20),
        max_lines: file_cfg.batch_max_lines.unwrap_or(50_000),
        concurrency: file_cfg.batch_concurrency.unwrap_or(max_running / 2).max(1),
        second_windows: file_cfg.batch_second_windows.unwrap_or(false),
        files_dir,
    })
    .context("cannot create the files directory (`files_dir`)")?;

    rt.block_on(async move {
        tracing::info!(instance = %platform_cfg.instance, "recovering unsettled reservations");
        let platform = Platform::open(store, platform_cfg)
            .await
            .context("cannot open the ledger")?;
        let state = Arc::new(
            AppState::new(
                registry.iter().map(|(_, e)| e.clone()).collect(),
                limits,
                Some(platform.clone()),
                admin_key.as_deref().map(tokenfab_platform::keys::hash),
            )
            .with_batches(batches),
        );
        tokenfab_server::batch::runner::start(state.clone());
        #[cfg(unix)]
        registry::reload_on_hangup(reloadable, registry, how, state.clone());
        #[cfg(not(unix))]
        drop((reloadable, registry, how));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; is another server using the port? (`--port` picks another)"))?;
        if secured {
            tracing::info!("serving on http://{addr}/v1 (API keys required)");
        } else {
            tracing::warn!("serving on http://{addr}/v1 with no API keys: open to anyone who can reach this address (`tokenfab keys create --account NAME` turns keys on)");
        }
        tokenfab_server::serve(listener, state, shutdown_signal()).await;
        // The requests the drain cut settle as their handlers notice; what they and the
        // finished ones queued is committed before the process exits.
        if tokio::time::timeout(SETTLE_AT_EXIT, platform.quiesce()).await.is_err() {
            tracing::error!("the ledger did not record every settlement in {SETTLE_AT_EXIT:?}; the holds left are released, uncharged, when this instance next starts");
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// How long a stopping server waits, after its connections are closed, for the ledger to
/// record the last settlements.
const SETTLE_AT_EXIT: Duration = Duration::from_secs(10);

/// The request and connection limits: flags over the file over the defaults.
fn limits(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<Limits> {
    let defaults = Limits::default();
    let secs =
        |flag: Option<u64>, key: Option<u64>, name: &str, default: Duration| match flag.or(key) {
            Some(0) => anyhow::bail!("`{name}` must be at least 1 second"),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
    let max_connections = args
        .max_connections
        .or(file.max_connections)
        .unwrap_or(defaults.max_connections);
    if max_connections == 0 {
        anyhow::bail!("`max_connections` must be at least 1");
    }
    let max_header_bytes = args
        .max_header_bytes
        .or(file.max_header_bytes)
        .unwrap_or(defaults.max_header_bytes);
    // A browser's or SDK's ordinary head is a few hundred bytes to a few KiB.
    if max_header_bytes < 1024 {
        anyhow::bail!("`max_header_bytes` must be at least 1024");
    }
    Ok(Limits {
        max_body_bytes: file.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        max_output_tokens: args.max_output_tokens.or(file.max_output_tokens),
        body_read_timeout: secs(
            args.body_read_timeout_secs,
            file.body_read_timeout_secs,
            "body_read_timeout_secs",
            defaults.body_read_timeout,
        )?,
        header_read_timeout: secs(
            args.header_read_timeout_secs,
            file.header_read_timeout_secs,
            "header_read_timeout_secs",
            defaults.header_read_timeout,
        )?,
        keep_alive_idle: secs(
            args.keep_alive_idle_secs,
            file.keep_alive_idle_secs,
            "keep_alive_idle_secs",
            defaults.keep_alive_idle,
        )?,
        shutdown_grace: secs(
            args.shutdown_grace_secs,
            file.shutdown_grace_secs,
            "shutdown_grace_secs",
            defaults.shutdown_grace,
        )?,
        max_connections,
        max_header_bytes,
        ..defaults
    })
}

/// Each connection holds a file descriptor: with fewer allowed than `max_connections`
/// (plus the models, the ledger and the upstreams' own), accepting fails before the
/// connection limit answers its clear 503.
fn warn_if_descriptors_short(max_connections: usize) {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    if let Some(soft) = soft
        && soft < max_connections + 64
    {
        tracing::warn!(
            "`ulimit -n` is {soft}, too few for max_connections = {max_connections}: raise it \
             (`ulimit -n {}`, or LimitNOFILE= in a systemd unit) or lower max_connections",
            max_connections + 256
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
