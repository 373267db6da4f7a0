//! The `tokenfab` command: `serve` the API, manage `models`, `keys`, `accounts`, read
//! `usage`, `bench` the engine.
//!
//! This crate is glue: configuration and flags in, the models crate resolves files, the
//! engine loads them, the platform keeps the ledger, the server serves them.

mod admin;
mod bench;
mod config;
mod proxy_bench;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokenfab_engine::gguf::GgufFile;
use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::scheduler::{self, SchedulerConfig};
use tokenfab_engine::template::ChatTemplate;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_models::{DEFAULT_MODEL, ModelSpec, ResolvedModel, catalog, default_cache_dir};
use tokenfab_platform::store::Store;
use tokenfab_platform::{ModelTerms, Platform, PlatformConfig, Terms};
use tokenfab_server::{
    AppState, Counter, Limits, ModelEntry, ModelType, Serve, ServedModel, UpstreamModel,
};
use tokenfab_text::reasoning::ThinkTags;
use tokenfab_upstream::dialect::Dialect;
use tokenfab_upstream::pool::{BackendConfig, Pool};

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
    /// Serve a non-loopback address although no API key exists (anyone who reaches it
    /// may use it).
    #[arg(long)]
    allow_open: bool,
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
        Command::Keys { command, db } => admin::keys(command, db),
        Command::Accounts { command, db } => admin::accounts(command, db),
        Command::Usage(args) => admin::usage(args),
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

/// What building models needs besides their own configuration.
#[derive(Clone)]
struct Loading {
    cache_dir: PathBuf,
    threads: usize,
    file_cfg: FileConfig,
}

/// A model of the configuration, resolved (and fetched on first use), loaded or connected.
fn build_model(m: &ModelConfig, how: &Loading) -> anyhow::Result<ModelEntry> {
    let kind = ModelType::parse(m.kind.as_deref().unwrap_or("chat")).context("model type")?;
    let (id, serve) = match &m.source {
        Some(source) => {
            let (id, served) = load_local(m, source, how)?;
            (id, Serve::Local(Arc::new(served)))
        }
        None => {
            let id = m.id.clone().context("an upstream model needs an id")?;
            (id, Serve::Upstream(Arc::new(connect_upstream(m, how)?)))
        }
    };
    Ok(ModelEntry {
        owned_by: id.split('/').next().unwrap_or("tokenfab").to_owned(),
        sub_type: m
            .sub_type
            .clone()
            .unwrap_or_else(|| kind.as_str().to_owned()),
        kind,
        created: tokenfab_wire::time::unix_now(),
        serve,
        id,
    })
}

/// Resolves a local model's source (fetching it on first use) and loads it.
fn load_local(
    m: &ModelConfig,
    source: &str,
    how: &Loading,
) -> anyhow::Result<(String, ServedModel)> {
    let spec: ModelSpec = source.parse()?;
    let ResolvedModel { id, path } = spec.resolve(&how.cache_dir, true)?;
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
    if m.reasoning.is_some()
        || m.think_start.is_some()
        || m.think_end.is_some()
        || m.thinking_budget.is_some()
    {
        loaded.set_reasoning(m.reasoning, Some(think_tags(m)), m.thinking_budget);
    }
    if let Some(r) = &loaded.reasoning {
        tracing::info!(%id, start = %r.tags.start, end = %r.tags.end, switchable = r.switchable, "reasoning model");
    }
    if loaded.template.is_none() {
        tracing::warn!(%id, "the model has no chat template: chat requests will be refused until one is configured");
    }
    let defaults = SchedulerConfig::default();
    let cfg = &how.file_cfg;
    let engine = scheduler::start(
        loaded.model.clone(),
        loaded.tokenizer.clone(),
        loaded.reasoning,
        SchedulerConfig {
            threads: how.threads,
            max_running: cfg.max_running.unwrap_or(defaults.max_running),
            max_waiting: cfg.max_waiting.unwrap_or(defaults.max_waiting),
            prefix_cache_bytes: cfg
                .prefix_cache_mb
                .map_or(defaults.prefix_cache_bytes, |mb| mb << 20),
            ..defaults
        },
    )?;
    Ok((
        id,
        ServedModel {
            engine,
            tokenizer: loaded.tokenizer,
            template: loaded.template,
        },
    ))
}

fn think_tags(m: &ModelConfig) -> ThinkTags {
    let defaults = ThinkTags::default();
    ThinkTags {
        start: m.think_start.clone().unwrap_or(defaults.start),
        end: m.think_end.clone().unwrap_or(defaults.end),
    }
}

/// An upstream model's backend pool (probed from now on) and its usage counter.
fn connect_upstream(m: &ModelConfig, how: &Loading) -> anyhow::Result<UpstreamModel> {
    let id = m.name();
    let secs = |s: Option<f64>, default: f64| Duration::from_secs_f64(s.unwrap_or(default));
    let backends = m
        .backends
        .iter()
        .map(|b| {
            let api_key = match &b.api_key_env {
                Some(var) => Some(std::env::var(var).with_context(|| {
                    format!("model `{id}`: the environment variable {var} (api_key_env) is not set")
                })?),
                None => b.api_key.clone(),
            };
            Ok(BackendConfig {
                url: b.url.clone(),
                api_key,
                model: b.model.clone().unwrap_or_else(|| id.to_owned()),
                weight: b.weight.unwrap_or(1),
                connect_timeout: secs(b.connect_timeout_s, 3.0),
                timeout: secs(b.timeout_s, 600.0),
                idle_timeout: secs(b.idle_timeout_s, 120.0),
                ca_file: b.ca_file.clone(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pool = Arc::new(
        Pool::new(backends, m.affinity.unwrap_or(false))
            .map_err(|e| anyhow::anyhow!("model `{id}`: {e}"))?,
    );
    pool.watch(secs(m.health_interval_s, 5.0));
    let counter = m
        .tokenizer
        .as_deref()
        .map(|source| -> anyhow::Result<Counter> {
            let spec: ModelSpec = source.parse()?;
            let path = spec.resolve(&how.cache_dir, true)?.path;
            let g = GgufFile::open(&path).with_context(|| {
                format!("model `{id}`: cannot read the tokenizer {}", path.display())
            })?;
            let tokenizer = Tokenizer::from_gguf(&g)?;
            let template = g
                .get_str("tokenizer.chat_template")
                .map(|src| {
                    let text = |t: Option<u32>| {
                        t.and_then(|i| tokenizer.token_text(i))
                            .unwrap_or("")
                            .to_owned()
                    };
                    ChatTemplate::new(src, &text(tokenizer.bos_id()), &text(tokenizer.eos_id()))
                })
                .transpose()?;
            Ok(Counter {
                tokenizer: Arc::new(tokenizer),
                template,
            })
        })
        .transpose()?;
    tracing::info!(%id, backends = m.backends.len(), "upstream model");
    Ok(UpstreamModel {
        pool,
        think: (m.reasoning != Some(false)).then(|| think_tags(m)),
        context_length: m.context_length.unwrap_or(32_768),
        counter,
        dialect: m
            .dialect
            .as_deref()
            .and_then(Dialect::parse)
            .unwrap_or_default(),
    })
}

/// The served models, each with the configuration it was built from: a reload rebuilds
/// only what changed, so unchanged local models keep their engines (and their caches) and
/// unchanged upstream pools their health.
type Registry = Vec<(ModelConfig, Arc<ModelEntry>)>;

fn build_registry(
    models: &[ModelConfig],
    previous: &Registry,
    how: &Loading,
) -> anyhow::Result<Registry> {
    models
        .iter()
        .map(|m| {
            let kept = previous
                .iter()
                .find(|(c, _)| c == m)
                .map(|(_, e)| e.clone());
            let entry = match kept {
                Some(e) => e,
                None => Arc::new(build_model(m, how)?),
            };
            Ok((m.clone(), entry))
        })
        .collect()
}

/// Prices and limits of the configuration, for the platform.
fn terms(file_cfg: &FileConfig, registry: &Registry) -> anyhow::Result<Terms> {
    let mut models = HashMap::new();
    for (m, e) in registry {
        models.insert(
            e.id.to_ascii_lowercase(),
            ModelTerms {
                price: m.price()?,
                limits: m.limits.clone(),
            },
        );
    }
    Ok(Terms {
        tiers: file_cfg.limits.clone(),
        models,
    })
}

/// Serves what the configuration file says now: models, prices, limits. Requests in flight
/// keep the models they started with.
fn reload(
    path: &std::path::Path,
    registry: &mut Registry,
    how: &Loading,
    state: &AppState,
) -> anyhow::Result<()> {
    let file_cfg = FileConfig::load(path)?;
    if file_cfg.models.is_empty() {
        anyhow::bail!("the config file serves no models");
    }
    let how = Loading {
        file_cfg: file_cfg.clone(),
        ..how.clone()
    };
    let next = build_registry(&file_cfg.models, registry, &how)?;
    let terms = terms(&file_cfg, &next)?;
    state.set_models(next.iter().map(|(_, e)| e.clone()).collect());
    if let Some(p) = &state.platform {
        p.set_terms(terms);
    }
    *registry = next;
    Ok(())
}

/// Reloads `config` on every SIGHUP until the process ends. Without a config file (models
/// from flags) a SIGHUP is logged and ignored rather than ending the server.
#[cfg(unix)]
fn reload_on_hangup(
    config: Option<PathBuf>,
    mut registry: Registry,
    how: Loading,
    state: Arc<AppState>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: configuration reloads are off");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let Some(path) = &config else {
                tracing::warn!(
                    "SIGHUP: nothing to reload, the models come from flags, not a config file"
                );
                continue;
            };
            tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
            let (p, h, s) = (path.clone(), how.clone(), state.clone());
            let result = tokio::task::spawn_blocking(move || {
                let r = reload(&p, &mut registry, &h, &s);
                (r, registry)
            })
            .await;
            match result {
                Ok((r, kept)) => {
                    registry = kept;
                    match r {
                        Ok(()) => tracing::info!(models = registry.len(), "configuration reloaded"),
                        Err(e) => tracing::error!(
                            "configuration not reloaded, still serving the previous one: {e:#}"
                        ),
                    }
                }
                Err(e) => {
                    tracing::error!(%e, "the reload panicked; SIGHUP reloads are off");
                    return;
                }
            }
        }
    });
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
    let registry = rt.block_on(async {
        // Upstream pools start their health probes on the runtime.
        build_registry(&models, &Vec::new(), &how)
    })?;
    let terms = terms(&file_cfg, &registry)?;
    let platform_cfg = PlatformConfig {
        redis_url: args.redis.clone().or(file_cfg.redis_url.clone()),
        instance: args
            .instance
            .clone()
            .or(file_cfg.instance.clone())
            .unwrap_or_else(|| format!("{}:{port}", admin::host_name())),
        tiers: terms.tiers,
        models: terms.models,
    };
    let admin_key = args.admin_key.clone().or(file_cfg.admin_key.clone());
    let defaults = Limits::default();
    let limits = Limits {
        max_body_bytes: file_cfg.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        max_output_tokens: args.max_output_tokens.or(file_cfg.max_output_tokens),
        ..defaults
    };

    rt.block_on(async move {
        tracing::info!(instance = %platform_cfg.instance, "recovering unsettled reservations");
        let platform = Platform::open(store, platform_cfg)
            .await
            .context("cannot open the ledger")?;
        let state = Arc::new(AppState::new(
            registry.iter().map(|(_, e)| e.clone()).collect(),
            limits,
            Some(platform),
            admin_key.as_deref().map(tokenfab_platform::keys::hash),
        ));
        #[cfg(unix)]
        reload_on_hangup(reloadable, registry, how, state.clone());
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
