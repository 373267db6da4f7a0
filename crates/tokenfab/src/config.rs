//! Server configuration: a TOML file, overridden by flags and environment variables.
//!
//! ```toml
//! host = "127.0.0.1"
//! port = 8000
//! threads = 2            # math threads per model (default: all cores)
//! max_running = 16       # sequences stepped together
//! max_waiting = 64       # queued requests before 503
//! max_body_bytes = 4194304
//! max_connections = 1024    # open connections; past it, 503 (keep under `ulimit -n`)
//! max_header_bytes = 16384  # request line and headers; past it, 431
//! header_read_timeout_secs = 10 # to send a request's head; slower clients are dropped
//! body_read_timeout_secs = 30   # longest silence inside a request body; then 408
//! keep_alive_idle_secs = 60     # a kept-alive connection's wait for its next request
//! shutdown_grace_secs = 20      # SIGTERM: requests in flight may finish this long, then cut
//! max_output_tokens = 16384 # ceiling on generated tokens per choice (default: the context)
//! prefix_cache_mb = 128     # per model: computed prompt prefixes kept for later requests
//! cache_dir = "/var/cache/tokenfab"
//! database_url = "sqlite:///var/lib/tokenfab/tokenfab.db" # or postgres://user@host/db
//! redis_url = "redis://127.0.0.1:6379/"  # rate-limit counters shared by replicas
//! rate_limits_fail_open = false # Redis unreachable: true admits without rate limits,
//!                           # false (default) answers 503
//! instance = "replica-a"    # this server's name in the ledger (default: host:port)
//! admin_key = "…"           # turns on the /admin API (better: TOKENFAB_ADMIN_KEY)
//! files_dir = "/var/lib/tokenfab/files" # the batch API's files (default: the data
//!                           # directory's `files`; replicas share one directory)
//! max_file_bytes = 104857600 # largest upload to /v1/files (default 100 MiB)
//! batch_max_lines = 50000   # requests in one batch at most
//! batch_concurrency = 8     # batch lines in the engines at once (default max_running / 2)
//!
//! [limits.default]          # per account tier, for every model
//! rpm = 60
//! tpm = 100000
//! rpd = 10000
//! tpd = 10000000
//!
//! [[models]]
//! id = "HuggingFaceTB/SmolLM2-135M-Instruct"    # the id clients send
//! source = "HuggingFaceTB/SmolLM2-135M-Instruct" # catalog id, local path, or hf:org/repo/file.gguf
//! context_length = 8192                         # optional cap
//! chat_template_file = "template.jinja"         # optional, replaces the GGUF's template
//! draft = "Qwen/Qwen2.5-Coder-0.5B-Instruct"   # optional: speculative decoding with this
//!                                              # smaller model of the same vocabulary
//! reasoning = true          # split <think>…</think> into reasoning_content (default: detected)
//! think_start = "<think>"   # optional, the thought's tags
//! think_end = "</think>"
//! thinking_budget = 4096    # reasoning tokens when a request does not say
//! input_per_million = "0.50"       # price per million prompt tokens (0 = free)
//! output_per_million = "2.00"      # per million generated tokens, reasoning included
//! cached_input_per_million = "0.10" # prompt tokens from the prefix cache (default: input)
//! batch_discount = "0.5"    # the share of these prices a batch request pays (default 1)
//! [models.limits.default]   # this model's limits for a tier, over the tier's own
//! rpm = 10
//!
//! [[models]]                # an upstream model: answered by OpenAI-compatible servers
//! id = "deepseek-ai/DeepSeek-R1"
//! type = "chat"             # chat, embedding or reranker: /v1/models' filter and the
//!                           # endpoint; a local model's own kind when absent
//! sub_type = "chat"         # optional, defaults to the type
//! context_length = 65536    # bounds the reservation of a request without max_tokens
//! tokenizer = "Qwen/Qwen2.5-Coder-0.5B-Instruct" # optional: counts usage an upstream omits
//! affinity = true           # conversations stay on one backend while it is not overloaded
//! dialect = "vllm"           # the backends' engine: enable_thinking / thinking_budget in its fields
//! health_interval_s = 5     # probes of each backend's GET /models
//! input_per_million = "4.00"
//! output_per_million = "16.00"
//! [[models.backends]]
//! url = "http://10.0.0.5:8000/v1"   # https:// too, in builds with `--features tls`
//! model = "deepseek-r1"     # the upstream's name (default: the id)
//! api_key_env = "VLLM_KEY"  # or api_key = "…"
//! weight = 2                # share of requests (default 1)
//! connect_timeout_s = 3
//! timeout_s = 600           # until the answer starts (a whole non-streamed answer)
//! idle_timeout_s = 120      # longest silence inside a stream
//! # ca_file = "/etc/tokenfab/ca.pem"  # https backends under a private CA (tls builds)
//! ```
//!
//! `kill -HUP` reloads the models, prices and limits from the file without dropping
//! requests in flight; the rest (address, ledger, threads) needs a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use tokenfab_platform::limits::Rates;
use tokenfab_platform::money::{Money, Price, Share};
use tokenfab_upstream::dialect::Dialect;
use tokenfab_upstream::http::Origin;

/// The file's shape. Every field is optional; defaults give the quick start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub threads: Option<usize>,
    pub max_running: Option<usize>,
    pub max_waiting: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub header_read_timeout_secs: Option<u64>,
    pub body_read_timeout_secs: Option<u64>,
    pub keep_alive_idle_secs: Option<u64>,
    /// How long a shutdown lets the requests in flight finish before it cuts them.
    pub shutdown_grace_secs: Option<u64>,
    pub max_output_tokens: Option<usize>,
    /// MiB per model for reusing computed prompt prefixes across requests (0 disables).
    pub prefix_cache_mb: Option<usize>,
    pub cache_dir: Option<PathBuf>,
    /// The ledger: `sqlite://PATH` (default: in the data directory) or `postgres://…`.
    pub database_url: Option<String>,
    /// Rate-limit counters in Redis instead of this process.
    pub redis_url: Option<String>,
    /// Admit requests without rate limits while Redis is unreachable (default: refuse them
    /// with 503).
    pub rate_limits_fail_open: Option<bool>,
    /// This server's name in reservations.
    pub instance: Option<String>,
    /// Enables `/admin` with this key.
    pub admin_key: Option<String>,
    /// The batch API's files (default: `files` in the data directory).
    pub files_dir: Option<PathBuf>,
    pub max_file_bytes: Option<usize>,
    pub batch_max_lines: Option<usize>,
    /// Batch lines in the engines at once (default: half of `max_running`).
    pub batch_concurrency: Option<usize>,
    /// Accept completion windows in seconds (`"30s"`): for tests of expiry only.
    pub batch_second_windows: Option<bool>,
    /// Limits per account tier.
    #[serde(default)]
    pub limits: HashMap<String, Rates>,
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

/// One served model: local (`source`) or upstream (`backends`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The id clients send; defaults to the source's id.
    pub id: Option<String>,
    /// A local model's GGUF: catalog id, local path, or `hf:org/repo/file.gguf`.
    pub source: Option<String>,
    /// `chat` (default), `embedding` or `reranker`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub sub_type: Option<String>,
    pub context_length: Option<usize>,
    /// An embedding model's pooling (`mean`, `cls` or `last`): over its own default for
    /// an encoder; for a chat GGUF declared `type = "embedding"`, how its final hidden
    /// states make a vector (`last` for Qwen3-Embedding's kind, `mean` otherwise).
    pub pooling: Option<String>,
    /// An embedding model trained with Matryoshka representation learning: the shorter
    /// sizes its vectors may be cut to (`dimensions` in a request), over the catalog's.
    pub matryoshka_dimensions: Option<Vec<usize>>,
    pub chat_template_file: Option<PathBuf>,
    /// A local model's draft for speculative decoding: a smaller model (catalog id, path
    /// or `hf:` spec) with the very same vocabulary.
    pub draft: Option<String>,
    /// Split `<think>` thoughts into `reasoning_content`: `true`/`false` overrides the
    /// detection from the chat template (which finds Qwen3, DeepSeek-R1, QwQ). For upstream
    /// models, `false` passes `content` on untouched.
    pub reasoning: Option<bool>,
    /// Tags around the thought, when not `<think>` / `</think>`.
    pub think_start: Option<String>,
    pub think_end: Option<String>,
    /// Reasoning tokens allowed when a request gives no `thinking_budget` (default 4096).
    pub thinking_budget: Option<usize>,
    /// Prices per million tokens (decimal strings or numbers; 0 or absent = free).
    pub input_per_million: Option<Amount>,
    pub output_per_million: Option<Amount>,
    pub cached_input_per_million: Option<Amount>,
    /// The share of the prices a batch request pays: above 0, at most 1 (default).
    pub batch_discount: Option<Amount>,
    /// This model's limits per account tier, field by field over the tier's.
    #[serde(default)]
    pub limits: HashMap<String, Rates>,
    /// Upstream: a model source whose tokenizer counts usage an upstream does not report.
    pub tokenizer: Option<String>,
    /// Upstream: requests sharing a conversation's beginning go to the same backend.
    pub affinity: Option<bool>,
    /// Upstream: seconds between health probes of each backend (default 5).
    pub health_interval_s: Option<f64>,
    /// Upstream: the engine the backends run (`openai`, `tokenfab`, `vllm`, `llama.cpp`,
    /// `sglang`), for its spelling of `enable_thinking` and `thinking_budget`.
    pub dialect: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
}

/// One upstream server of a model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub url: String,
    pub model: Option<String>,
    pub api_key: Option<String>,
    /// The environment variable holding the key (keeps it out of the file).
    pub api_key_env: Option<String>,
    pub weight: Option<u32>,
    pub connect_timeout_s: Option<f64>,
    pub timeout_s: Option<f64>,
    pub idle_timeout_s: Option<f64>,
    /// PEM certificates an https backend's certificate must chain to (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl ModelConfig {
    /// How the model is named in messages: its id, else its source.
    pub fn name(&self) -> &str {
        self.id
            .as_deref()
            .or(self.source.as_deref())
            .unwrap_or("(unnamed)")
    }

    /// Refuses what cannot be served, naming the model.
    fn check(&self) -> anyhow::Result<()> {
        let name = self.name();
        match (&self.source, self.backends.is_empty()) {
            (Some(_), false) => {
                bail!("model `{name}` has both a `source` and `backends`: pick one")
            }
            (None, true) => {
                bail!("model `{name}` needs a `source` (local) or `backends` (upstream)")
            }
            (None, false) if self.id.is_none() => bail!("an upstream model needs an `id`"),
            _ => {}
        }
        let kind = self.kind.as_deref().unwrap_or("chat");
        if !["chat", "embedding", "reranker"].contains(&kind) {
            bail!("model `{name}`: `type` must be chat, embedding or reranker, not `{kind}`");
        }
        if self.draft.is_some() && self.source.is_none() {
            bail!(
                "model `{name}`: a `draft` speeds up a local model; an upstream drafts on its own"
            );
        }
        for b in &self.backends {
            if let Err(e) = Origin::parse(&b.url) {
                bail!("model `{name}`: {e}");
            }
            if b.weight == Some(0) {
                bail!("model `{name}`: a backend's `weight` must be at least 1");
            }
            if b.api_key.is_some() && b.api_key_env.is_some() {
                bail!("model `{name}`: give a backend `api_key` or `api_key_env`, not both");
            }
            let times = [b.connect_timeout_s, b.timeout_s, b.idle_timeout_s];
            if times.into_iter().flatten().any(|t| !(t > 0.0 && t < 1e7)) {
                bail!("model `{name}`: backend timeouts must be positive numbers of seconds");
            }
        }
        if let Some(d) = &self.dialect
            && (self.backends.is_empty() || Dialect::parse(d).is_none())
        {
            bail!(
                "model `{name}`: `dialect` is for upstream models and is one of {}, not `{d}`",
                Dialect::names()
            );
        }
        if self
            .health_interval_s
            .is_some_and(|t| !(t > 0.0 && t < 1e7))
        {
            bail!("model `{name}`: `health_interval_s` must be a positive number of seconds");
        }
        Ok(())
    }
}

/// A price in the config: `"0.50"` or `0.5`. Numbers are read through their shortest
/// decimal form, so `0.1` is exactly one tenth, never the float nearest to it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Amount {
    /// The decimal as written (a number in its shortest form).
    fn text(&self) -> String {
        match self {
            Amount::Text(s) => s.clone(),
            Amount::Int(i) => i.to_string(),
            Amount::Float(f) => f.to_string(),
        }
    }

    pub fn money(&self) -> anyhow::Result<Money> {
        let text = self.text();
        let m: Money = text.parse()?;
        if m.0 < 0 {
            bail!("a price cannot be negative: {text}");
        }
        Ok(m)
    }
}

impl ModelConfig {
    /// The model's prices.
    pub fn price(&self) -> anyhow::Result<Price> {
        let get = |a: &Option<Amount>, what: &str| -> anyhow::Result<Option<Money>> {
            a.as_ref()
                .map(|a| {
                    a.money()
                        .with_context(|| format!("`{what}` of model `{}`", self.name()))
                })
                .transpose()
        };
        Ok(Price {
            input_per_million: get(&self.input_per_million, "input_per_million")?
                .unwrap_or_default(),
            output_per_million: get(&self.output_per_million, "output_per_million")?
                .unwrap_or_default(),
            cached_input_per_million: get(
                &self.cached_input_per_million,
                "cached_input_per_million",
            )?,
        })
    }
}

impl ModelConfig {
    /// The share of its prices the model's batch requests pay.
    pub fn batch_discount(&self) -> anyhow::Result<Share> {
        let Some(a) = &self.batch_discount else {
            return Ok(Share::default());
        };
        a.text()
            .parse()
            .with_context(|| format!("`batch_discount` of model `{}`", self.name()))
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let cfg: FileConfig = toml::from_str(&text)
            .with_context(|| format!("the config file {} is not valid", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut cfg = cfg;
        // Relative template paths are relative to the config file, not the working dir.
        for m in &mut cfg.models {
            if let Some(t) = &m.chat_template_file
                && t.is_relative()
            {
                m.chat_template_file = Some(base.join(t));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for m in &cfg.models {
            m.check()
                .with_context(|| format!("the config file {} is not valid", path.display()))?;
            m.price()?;
            m.batch_discount()?;
            if let Some(id) = &m.id
                && !ids.insert(id.to_ascii_lowercase())
            {
                bail!(
                    "the config file {} serves the model id `{id}` twice",
                    path.display()
                );
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_config_and_resolves_template_paths() {
        let dir = std::env::temp_dir().join(format!("tokenfab-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokenfab.toml");
        std::fs::write(
            &p,
            r#"port = 9000
threads = 1
[[models]]
id = "a/b"
source = "/models/x.gguf"
chat_template_file = "t.jinja"
input_per_million = 0.1
output_per_million = "2.50"
[models.limits.default]
rpm = 5
[limits.default]
tpm = 1000
"#,
        )
        .unwrap();
        let c = FileConfig::load(&p).unwrap();
        assert_eq!(c.port, Some(9000));
        assert_eq!(
            c.models[0].chat_template_file.as_deref(),
            Some(dir.join("t.jinja").as_path())
        );
        let price = c.models[0].price().unwrap();
        assert_eq!(price.input_per_million, Money(100_000));
        assert_eq!(price.output_per_million, Money(2_500_000));
        assert_eq!(c.models[0].limits["default"].rpm, Some(5));
        assert_eq!(c.limits["default"].tpm, Some(1000));
        std::fs::remove_dir_all(dir).ok();
    }

    fn check(toml_text: &str) -> Result<(), String> {
        let c: FileConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        c.models
            .iter()
            .try_for_each(|m| m.check())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn upstream_models_parse_and_bad_ones_are_refused() {
        let ok = r#"[[models]]
id = "up/r1"
type = "chat"
affinity = true
dialect = "llama.cpp"
[[models.backends]]
url = "http://10.0.0.5:8000/v1"
model = "r1"
weight = 2
timeout_s = 30
"#;
        check(ok).unwrap();
        let c: FileConfig = toml::from_str(ok).unwrap();
        assert_eq!(c.models[0].backends[0].weight, Some(2));
        let refused = [
            ("[[models]]\nid = \"x\"\n", "needs a `source`"),
            (
                "[[models]]\nid = \"x\"\nsource = \"a.gguf\"\n[[models.backends]]\nurl = \"http://h/v1\"\n",
                "both",
            ),
            (
                "[[models]]\n[[models.backends]]\nurl = \"http://h/v1\"\n",
                "needs an `id`",
            ),
            (
                "[[models]]\nid = \"x\"\n[[models.backends]]\nurl = \"ftp://h/v1\"\n",
                "http://",
            ),
            (
                "[[models]]\nid = \"x\"\n[[models.backends]]\nurl = \"http://h:99999/v1\"\n",
                "invalid port",
            ),
            (
                "[[models]]\nid = \"x\"\n[[models.backends]]\nurl = \"http://u:p@h/v1\"\n",
                "api_key",
            ),
            (
                "[[models]]\nid = \"x\"\ntype = \"image\"\n[[models.backends]]\nurl = \"http://h/v1\"\n",
                "chat, embedding or reranker",
            ),
            (
                "[[models]]\nid = \"x\"\n[[models.backends]]\nurl = \"http://h/v1\"\nweight = 0\n",
                "weight",
            ),
            (
                "[[models]]\nid = \"x\"\n[[models.backends]]\nurl = \"http://h/v1\"\ntimeout_s = -1\n",
                "positive",
            ),
            (
                "[[models]]\nid = \"x\"\ndialect = \"ollama\"\n[[models.backends]]\nurl = \"http://h/v1\"\n",
                "one of openai, tokenfab, vllm, llama.cpp, sglang",
            ),
            (
                "[[models]]\nsource = \"a.gguf\"\ndialect = \"vllm\"\n",
                "for upstream models",
            ),
            (
                "[[models]]\nid = \"x\"\ndraft = \"d.gguf\"\n[[models.backends]]\nurl = \"http://h/v1\"\n",
                "drafts on its own",
            ),
        ];
        for (text, why) in refused {
            let e = check(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<FileConfig>("prot = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prot"), "{e}");
    }
}
