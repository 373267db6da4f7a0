//! The `tokenfab` command: `serve` the API, manage `models`, `bench` the engine.
//!
//! This crate is glue: configuration and flags in, the models crate resolves files, the
//! engine loads them, the server serves them.

mod bench;
mod config;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::reasoning::ThinkTags;
use tokenfab_engine::scheduler::{self, SchedulerConfig};
use tokenfab_models::{DEFAULT_MODEL, ModelSpec, ResolvedModel, catalog, default_cache_dir};
use tokenfab_server::{AppState, DEFAULT_THINKING_BUDGET, Limits, ServedModel};

use crate::config::{FileConfig, ModelConfig};

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
    /// List, fetch or verify models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Measure prompt and decode speed of the engine on a model.
    Bench(bench::BenchArgs),
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
    /// Split `<think>` thoughts into `reasoning_content` (default: detected from the
    /// chat template).
    #[arg(long)]
    reasoning: Option<bool>,
    #[command(flatten)]
    cache: CacheArgs,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Models { command } => models(command),
        Command::Bench(args) => bench::run(args),
    }
}

fn models(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::List(cache) => {
            let dir = cache.dir();
            println!("{:<40} {:>12}  cached", "id", "size");
            for e in catalog() {
                let spec: ModelSpec = e.id.parse()?;
                let cached = if spec.is_cached(&dir) { "yes" } else { "no" };
                println!("{:<40} {:>9} MB  {cached}", e.id, e.size / 1_000_000);
            }
            println!("cache: {}", dir.display());
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

/// Resolves a model source (fetching it on first use) and loads it.
fn load_model(
    m: &ModelConfig,
    cache_dir: &std::path::Path,
    threads: usize,
    file_cfg: &FileConfig,
) -> anyhow::Result<ServedModel> {
    let spec: ModelSpec = m.source.parse()?;
    let ResolvedModel { id, path } = spec.resolve(cache_dir, true)?;
    let id = m.id.clone().unwrap_or(id);
    let template = m
        .chat_template_file
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read chat template {}", p.display()))
        })
        .transpose()?;
    tracing::info!(%id, path = %path.display(), "loading model");
    let mut loaded = LoadedModel::load(&path, template.as_deref(), m.context_length)
        .with_context(|| format!("cannot load model `{id}` from {}", path.display()))?;
    if m.reasoning.is_some() || m.think_start.is_some() || m.think_end.is_some() {
        let defaults = ThinkTags::default();
        let tags = ThinkTags {
            start: m.think_start.clone().unwrap_or(defaults.start),
            end: m.think_end.clone().unwrap_or(defaults.end),
        };
        loaded.set_reasoning(m.reasoning, Some(tags));
    }
    if let Some(r) = &loaded.reasoning {
        tracing::info!(%id, start = %r.tags.start, end = %r.tags.end, switchable = r.switchable, "reasoning model");
    }
    if loaded.template.is_none() {
        tracing::warn!(%id, "the model has no chat template: chat requests will be refused until one is configured");
    }
    let defaults = SchedulerConfig::default();
    let engine = scheduler::start(
        loaded.model.clone(),
        loaded.tokenizer.clone(),
        SchedulerConfig {
            threads,
            max_running: file_cfg.max_running.unwrap_or(defaults.max_running),
            max_waiting: file_cfg.max_waiting.unwrap_or(defaults.max_waiting),
            prefix_cache_bytes: file_cfg
                .prefix_cache_mb
                .map_or(defaults.prefix_cache_bytes, |mb| mb << 20),
            ..defaults
        },
    )?;
    let owned_by = id.split('/').next().unwrap_or("tokenfab").to_owned();
    Ok(ServedModel {
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        id,
        owned_by,
        engine,
        tokenizer: loaded.tokenizer,
        template: loaded.template,
        context_length: loaded.context_length,
        reasoning: loaded.reasoning,
        thinking_budget: m.thinking_budget.unwrap_or(DEFAULT_THINKING_BUDGET).max(1),
    })
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
        source: source.to_owned(),
        context_length: args.context_length,
        chat_template_file: args.chat_template.clone(),
        reasoning: args.reasoning,
        think_start: None,
        think_end: None,
        thinking_budget: None,
    };
    let models = match &args.model {
        Some(source) => vec![from_flags(source)],
        None if !file_cfg.models.is_empty() => file_cfg.models.clone(),
        None => vec![from_flags(DEFAULT_MODEL)],
    };
    let served = models
        .iter()
        .map(|m| load_model(m, &cache_dir, threads, &file_cfg).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let defaults = Limits::default();
    let state = Arc::new(AppState {
        models: served,
        limits: Limits {
            max_body_bytes: file_cfg.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_output_tokens: args.max_output_tokens.or(file_cfg.max_output_tokens),
            ..defaults
        },
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; is another server using the port? (`--port` picks another)"))?;
        tracing::info!("serving on http://{addr}/v1 (no API keys: open to anyone who can reach this address)");
        tokenfab_server::serve(listener, state, shutdown_signal()).await.context("the server failed")
    })
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
