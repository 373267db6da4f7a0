//! `tokenfab chat`: an interactive chat in the terminal, with the local engine or any
//! OpenAI-compatible server, like `ollama run`.
//!
//! There is one client path: without `--url` the model is served in this process, by the
//! same registry and server `serve` uses, on an ephemeral loopback port, and the chat
//! talks to it over HTTP like to any other server. So what the chat shows is what an API
//! client gets.
//!
//! # Layout
//! - `input`: lines typed (or piped) → entries: messages, `"""` blocks, `\` continuations,
//!   `/` commands.
//! - `answer`: one streamed request → the deltas on screen (the thought dimmed) → the
//!   answer's text and its statistics.
//! - here: the conversation (system prompt, history), the commands, Ctrl-C, and the local
//!   server.

mod answer;
mod input;

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use tokenfab_models::DEFAULT_MODEL;
use tokenfab_server::{AppState, Limits};
use tokenfab_upstream::http::{Client, Origin, success};

use self::answer::Printer;
use self::input::{Assembler, Command, Entry, Lines, Read};
use crate::CacheArgs;
use crate::config::{FileConfig, ModelConfig};
use crate::registry::{Loading, build_registry};

#[derive(Args)]
pub struct ChatArgs {
    /// The model. Without `--url`: what `serve --model` takes (a catalog id, a local GGUF
    /// path, `hf:org/repo/file.gguf`; default: the built-in SmolLM2). With `--url`: a model
    /// id that server serves (default: its only model).
    model: Option<String>,
    /// Chat with this OpenAI-compatible API (`http://HOST:PORT/v1`) instead of running the
    /// model here.
    #[arg(long)]
    url: Option<String>,
    /// The key `--url` wants (default: `OPENAI_API_KEY`).
    #[arg(long, env = "TOKENFAB_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The system prompt to start with (`/system` changes it).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per answer (default: the server's limit).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (0: always the most likely token; default: the server's).
    #[arg(long)]
    temperature: Option<f64>,
    /// Ask a reasoning model to answer without thinking first (`enable_thinking: false`).
    #[arg(long)]
    no_think: bool,
    /// Math threads of the local engine (default: all cores; not used with `--url`).
    #[arg(long, env = "TOKENFAB_THREADS")]
    threads: Option<usize>,
    /// Cap on the local model's context window (not used with `--url`).
    #[arg(long)]
    context_length: Option<usize>,
    #[command(flatten)]
    cache: CacheArgs,
}

const HELP: &str = "\
Commands:
  /system TEXT   set the system prompt (the conversation so far is kept); /system alone removes it
  /reset         forget the conversation (the system prompt stays); also /clear
  /help          this list
  /exit, /quit   leave (or Ctrl-D)
A line ending in \\ continues on the next line; a block between \"\"\" lines is one message.
Ctrl-C stops an answer, and the conversation goes on as if the question had not been asked
(so does an answer that fails). Ctrl-C at the prompt clears the line.";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest model list read.
const MAX_MODELS: usize = 1 << 20;

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let _in_rt = rt.enter();
    catch_interrupts()?;
    let (base, api_key) = match &args.url {
        Some(url) => (
            url.clone(),
            args.api_key
                .clone()
                .or_else(|| std::env::var("OPENAI_API_KEY").ok()),
        ),
        None => (start_local(&rt, &args)?, None),
    };
    let origin = Origin::parse(&base).map_err(anyhow::Error::msg)?;
    let client = Client::new(origin, api_key.as_deref(), CONNECT_TIMEOUT, None)
        .map_err(anyhow::Error::msg)?;
    let model = match (&args.url, &args.model) {
        (Some(_), Some(model)) => model.clone(),
        // A local model's id is derived from its source: the server says which.
        _ => rt.block_on(only_model(&client, &base))?,
    };
    let mut lines = Lines::open()?;
    if lines.interactive() {
        eprintln!("{model}: /help for commands, /exit or Ctrl-D to leave");
    }
    let mut chat = Chat {
        client,
        model,
        system: args.system.clone(),
        history: Vec::new(),
        args,
    };
    let mut typed = Assembler::default();
    loop {
        let prompt = if typed.continuing() { "... " } else { ">>> " };
        let entry = match lines.read(prompt)? {
            Read::Line(line) => typed.push(&line),
            Read::Interrupted => {
                typed.clear();
                continue;
            }
            Read::Eof => match typed.finish() {
                Some(entry) => {
                    chat.enter(&rt, entry);
                    break;
                }
                None => break,
            },
        };
        if let Some(entry) = entry
            && !chat.enter(&rt, entry)
        {
            break;
        }
    }
    // The local server's connections and the engine need no goodbye.
    rt.shutdown_background();
    Ok(())
}

/// Ctrl-C must never end the chat, not even before the first answer: taking the signal
/// once installs tokio's handler for the rest of the process. Each answer then listens
/// afresh, so a Ctrl-C at the prompt never stops the next answer.
fn catch_interrupts() -> io::Result<()> {
    #[cfg(unix)]
    drop(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::interrupt(),
    )?);
    #[cfg(windows)]
    drop(tokio::signal::windows::ctrl_c()?);
    Ok(())
}

/// Serves the model as `serve --model` would (fetched on first use), without a ledger or
/// keys, on a loopback port of its own; its base URL.
fn start_local(rt: &tokio::runtime::Runtime, args: &ChatArgs) -> anyhow::Result<String> {
    let source = args.model.as_deref().unwrap_or(DEFAULT_MODEL);
    eprintln!("loading {source}…");
    let model = ModelConfig {
        source: Some(source.to_owned()),
        context_length: args.context_length,
        ..ModelConfig::default()
    };
    let how = Loading {
        cache_dir: args.cache.dir(),
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        file_cfg: FileConfig::default(),
    };
    let registry = build_registry(&[model], &Vec::new(), &how)?;
    let state = Arc::new(AppState::new(
        registry.into_iter().map(|(_, e)| e).collect(),
        Limits::default(),
        None,
        None,
    ));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("cannot open a loopback port for the local model")?;
    let addr = listener.local_addr()?;
    rt.spawn(tokenfab_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    Ok(format!("http://{addr}/v1"))
}

/// The model a server serves when it serves exactly one; otherwise the user must choose.
async fn only_model(client: &Client, base: &str) -> anyhow::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let response = client
        .get("models", deadline)
        .await
        .with_context(|| format!("cannot list the models of {base}"))?;
    let status = response.status;
    let body = response.body.bytes(MAX_MODELS).await?;
    anyhow::ensure!(
        success(status),
        "GET {base}/models answered {status}: {}",
        String::from_utf8_lossy(&body).trim()
    );
    let list: Value = serde_json::from_slice(&body)
        .with_context(|| format!("GET {base}/models did not answer JSON"))?;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    match ids.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => anyhow::bail!("{base} serves no models"),
        many => anyhow::bail!(
            "{base} serves {} models; name one: tokenfab chat MODEL --url {base}\n  {}",
            many.len(),
            many.join("\n  ")
        ),
    }
}

/// The conversation.
struct Chat {
    client: Client,
    model: String,
    system: Option<String>,
    /// The turns so far, as the API takes them; the system prompt is added per request.
    history: Vec<Value>,
    args: ChatArgs,
}

impl Chat {
    /// Acts on an entry; false when the user leaves.
    fn enter(&mut self, rt: &tokio::runtime::Runtime, entry: Entry) -> bool {
        match entry {
            Entry::Message(text) => self.ask(rt, text),
            Entry::Command(Command::Help) => println!("{HELP}"),
            Entry::Command(Command::Reset) => {
                self.history.clear();
                note("the conversation is forgotten");
            }
            Entry::Command(Command::System(text)) => {
                note(match text {
                    Some(_) => "system prompt set",
                    None => "system prompt removed",
                });
                self.system = text;
            }
            Entry::Command(Command::Exit) => return false,
            Entry::Command(Command::Unknown(word)) => {
                eprintln!("{word} is no command; /help lists them");
            }
        }
        true
    }

    fn request(&self) -> Value {
        let mut messages = Vec::with_capacity(self.history.len() + 1);
        if let Some(system) = &self.system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.extend(self.history.iter().cloned());
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(n) = self.args.max_tokens {
            body["max_tokens"] = n.into();
        }
        if let Some(t) = self.args.temperature {
            body["temperature"] = t.into();
        }
        if self.args.no_think {
            body["enable_thinking"] = false.into();
        }
        body
    }

    /// Streams the answer to `text` until it ends or Ctrl-C stops it; only a whole answer
    /// joins the conversation, with its question.
    fn ask(&mut self, rt: &tokio::runtime::Runtime, text: String) {
        self.history.push(json!({"role": "user", "content": text}));
        let body = self.request();
        let mut printer = Printer::new(io::stdout(), io::stdout().is_terminal());
        let outcome = rt.block_on(async {
            tokio::select! {
                r = answer::stream(&self.client, &body, &mut printer) => Some(r),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        let shown = printer.end().map_err(anyhow::Error::from);
        match (outcome, shown) {
            (Some(Ok(stats)), Ok(shown)) => {
                self.history
                    .push(json!({"role": "assistant", "content": shown}));
                note(&stats.to_string());
            }
            // A stopped exchange is left out: the conversation holds only whole answers
            // (and sending a cut answer back makes tokenfab's engine hang, as of this
            // writing).
            (None, Ok(_)) => {
                self.history.pop();
                note("stopped; this question and its answer are left out of the conversation");
            }
            (Some(Err(e)), _) | (_, Err(e)) => {
                self.history.pop();
                eprintln!("error: {e:#}");
            }
        }
    }
}

/// A line about the chat rather than from the model: on stderr, dimmed on a terminal.
fn note(text: &str) {
    let mut err = io::stderr().lock();
    let _ = if err.is_terminal() {
        writeln!(err, "\x1b[2m{text}\x1b[0m")
    } else {
        writeln!(err, "{text}")
    };
}
