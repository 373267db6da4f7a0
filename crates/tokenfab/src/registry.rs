//! The served models, built from the configuration: a local model is resolved (fetched on
//! first use), loaded and given an engine; an upstream one gets its backend pool, probed
//! from then on, and its usage counter. A reload (SIGHUP) rebuilds only what changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokenfab_engine::encoder::{self, Encoder, EncoderHandle, Pooling};
use tokenfab_engine::gguf::GgufFile;
use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::scheduler::{self, SchedulerConfig};
use tokenfab_engine::speculative::Draft;
use tokenfab_engine::template::ChatTemplate;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_models::{ModelSpec, ResolvedModel};
use tokenfab_platform::{ModelTerms, Terms};
use tokenfab_server::{
    AppState, Counter, ModelEntry, ModelType, Serve, ServedModel, UpstreamModel,
};
use tokenfab_text::reasoning::ThinkTags;
use tokenfab_upstream::dialect::Dialect;
use tokenfab_upstream::pool::{BackendConfig, Pool};

use crate::config::{FileConfig, ModelConfig};

/// What building models needs besides their own configuration.
#[derive(Clone)]
pub struct Loading {
    pub cache_dir: PathBuf,
    pub threads: usize,
    pub file_cfg: FileConfig,
}

/// A model of the configuration, resolved (and fetched on first use), loaded or connected.
pub fn build_model(m: &ModelConfig, how: &Loading) -> anyhow::Result<ModelEntry> {
    let declared = m
        .kind
        .as_deref()
        .map(|k| ModelType::parse(k).context("model type"))
        .transpose()?;
    let (id, serve, kind) = match &m.source {
        Some(source) => {
            let spec: ModelSpec = source.parse()?;
            let ResolvedModel { id, path } = spec.resolve(&how.cache_dir, true)?;
            let id = m.id.clone().unwrap_or(id);
            // What the file is decides what it serves, and a declared type must agree; but
            // a chat model declared an embedding model serves as one, pooling its final
            // hidden states.
            let (serve, kind) = if Encoder::at(&path) || declared == Some(ModelType::Embedding) {
                let encoder = load_encoder(m, &spec, &id, &path, how)?;
                let kind = if encoder.config().reranker {
                    ModelType::Reranker
                } else {
                    ModelType::Embedding
                };
                (Serve::Encoder(encoder), kind)
            } else {
                let served = load_local(m, &id, &path, how)?;
                (Serve::Local(Arc::new(served)), ModelType::Chat)
            };
            // A chat model declared a reranker judges relevance (`/v1/rerank` only).
            let kind = match (declared, kind) {
                (Some(ModelType::Reranker), ModelType::Chat) => ModelType::Reranker,
                _ => kind,
            };
            if let Some(d) = declared
                && d != kind
            {
                bail!(
                    "model `{id}` is declared `type = \"{}\"` but {} holds a model of type {}",
                    d.as_str(),
                    path.display(),
                    kind.as_str()
                );
            }
            (id, serve, kind)
        }
        None => {
            let id = m.id.clone().context("an upstream model needs an id")?;
            let up = Serve::Upstream(Arc::new(connect_upstream(m, how)?));
            (id, up, declared.unwrap_or(ModelType::Chat))
        }
    };
    if kind != ModelType::Embedding && (m.pooling.is_some() || m.matryoshka_dimensions.is_some()) {
        bail!(
            "model `{id}` serves {}: `pooling` and `matryoshka_dimensions` apply to embedding models (a chat GGUF embeds when declared `type = \"embedding\"`)",
            kind.endpoint()
        );
    }
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

/// Loads an embedding model or a cross-encoder and starts its encoder thread. The
/// configuration's `pooling` and `matryoshka_dimensions` stand over the file's (and the
/// catalog's) own.
fn load_encoder(
    m: &ModelConfig,
    spec: &ModelSpec,
    id: &str,
    path: &Path,
    how: &Loading,
) -> anyhow::Result<EncoderHandle> {
    tracing::info!(%id, path = %path.display(), "loading encoder");
    let mut encoder = Encoder::load(path)
        .with_context(|| format!("cannot load model `{id}` from {}", path.display()))?;
    if let Some(p) = pooling(m)? {
        encoder.config.pooling = p;
    }
    if let Some(cap) = m.context_length {
        let c = &mut encoder.config;
        c.context_length = c.context_length.min(cap.max(1));
    }
    let catalog = match spec {
        ModelSpec::Catalog { entry, .. } => entry.dimensions,
        _ => &[],
    };
    if let Some(dims) = m
        .matryoshka_dimensions
        .as_deref()
        .or((!catalog.is_empty()).then_some(catalog))
    {
        let width = encoder.config.width;
        if let Some(bad) = dims.iter().find(|&&d| d == 0 || d > width) {
            bail!("model `{id}`: matryoshka_dimensions holds {bad}, outside 1..={width}");
        }
        encoder.config.dimensions = dims.to_vec();
    }
    let c = &encoder.config;
    tracing::info!(%id, arch = %c.arch, width = c.width, context = c.context_length, pooling = c.pooling.as_str(), reranker = c.reranker, "encoder");
    let max_waiting = how
        .file_cfg
        .max_waiting
        .unwrap_or(SchedulerConfig::default().max_waiting);
    Ok(encoder::start(Arc::new(encoder), how.threads, max_waiting)?)
}

/// The configured `pooling`, checked.
fn pooling(m: &ModelConfig) -> anyhow::Result<Option<Pooling>> {
    m.pooling
        .as_deref()
        .map(|p| {
            Pooling::parse(p)
                .with_context(|| format!("pooling `{p}` is not one of `mean`, `cls` or `last`"))
        })
        .transpose()
}

/// Loads a local chat model from its resolved file and starts its engine.
fn load_local(
    m: &ModelConfig,
    id: &str,
    path: &Path,
    how: &Loading,
) -> anyhow::Result<ServedModel> {
    let id = id.to_owned();
    let template = m
        .chat_template_file
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read chat template {}", p.display()))
        })
        .transpose()?;
    tracing::info!(%id, path = %path.display(), "loading model");
    let mut loaded = LoadedModel::load(path, template.as_deref(), m.context_length)
        .with_context(|| format!("cannot load model `{id}` from {}", path.display()))?;
    if m.reasoning.is_some()
        || m.think_start.is_some()
        || m.think_end.is_some()
        || m.thinking_budget.is_some()
    {
        loaded.set_reasoning(m.reasoning, Some(think_tags(m)), m.thinking_budget);
    }
    if let (Some(r), Some(b)) = (&loaded.reasoning, m.thinking_budget)
        && b < r.min_budget()
    {
        anyhow::bail!(
            "model `{id}`: thinking_budget = {b} is below {}: the tag that closes a thought takes {} of its tokens",
            r.min_budget(),
            r.close_tokens.len()
        );
    }
    if let Some(r) = &loaded.reasoning {
        tracing::info!(%id, start = %r.tags.start, end = %r.tags.end, switchable = r.switchable, "reasoning model");
    }
    if loaded.template.is_none() {
        tracing::warn!(%id, "the model has no chat template: chat requests will be refused until one is configured");
    }
    let draft = m
        .draft
        .as_deref()
        .map(|source| load_draft(&id, source, &loaded, how))
        .transpose()?;
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
            draft,
            name: id.to_string(),
            ..defaults
        },
    )?;
    Ok(ServedModel {
        engine,
        tokenizer: loaded.tokenizer,
        template: loaded.template,
    })
}

/// Loads `id`'s draft model from `source`, refused unless its vocabulary is the served
/// model's.
fn load_draft(
    id: &str,
    source: &str,
    target: &LoadedModel,
    how: &Loading,
) -> anyhow::Result<Arc<Draft>> {
    let spec: ModelSpec = source.parse()?;
    let ResolvedModel { path, .. } = spec.resolve(&how.cache_dir, true)?;
    let draft = LoadedModel::load(&path, None, None).with_context(|| {
        format!(
            "cannot load the draft model of `{id}` from {}",
            path.display()
        )
    })?;
    let draft = Draft::new(
        draft.model,
        &draft.tokenizer,
        &target.model,
        &target.tokenizer,
    )
    .with_context(|| format!("`{source}` cannot be the draft of `{id}`"))?;
    tracing::info!(%id, draft = %source, cost = format!("{:.2}", draft.cost), "speculative decoding");
    Ok(Arc::new(draft))
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
pub type Registry = Vec<(ModelConfig, Arc<ModelEntry>)>;

pub fn build_registry(
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
pub fn terms(file_cfg: &FileConfig, registry: &Registry) -> anyhow::Result<Terms> {
    let mut models = HashMap::new();
    for (m, e) in registry {
        models.insert(
            e.id.to_ascii_lowercase(),
            ModelTerms {
                price: m.price()?,
                limits: m.limits.clone(),
                batch_discount: m.batch_discount()?,
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
pub fn reload(
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
pub fn reload_on_hangup(
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
