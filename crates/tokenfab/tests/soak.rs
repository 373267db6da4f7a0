//! The soak: the real `tokenfab serve` under mixed traffic for a while, then checked at
//! rest for what long runs leak.
//!
//! Six clients send, for `TOKENFAB_SOAK_SECS` seconds (75 by default: the short version
//! `cargo test` runs; `scripts/soak.sh` runs the long one), a random mix of: whole and
//! streamed chats, `n` > 1, `/v1/completions`, a thinking model with budgets, structured
//! answers and tool calls, conversations that resend answers cut by `max_tokens` (the cut
//! answer as an assistant turn, with and without a user turn after it), streams dropped
//! mid-way and whole answers hung up on, bad requests (400, 404), a free model past its
//! RPM (429) and a paid one past a small balance (402). Every request must complete within
//! [`STALL`]: a request that does not is a failure printed with its body, so a server that
//! stops producing tokens fails the soak instead of hanging it.
//!
//! At rest: nothing running or waiting, every KV block either free or kept by the prefix
//! cache (`tokenfab:kv_blocks_used` = `tokenfab:prefix_cache_blocks`), no reservation left
//! in the ledger, each account's charges exactly the sum of its answers' costs (computed
//! here from their `usage`) and its balance its credit less those charges, and the
//! server's RSS within 10% above its level after the warm-up (the first third of the run,
//! at most five minutes). The figures are printed (`--nocapture` shows them).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ledger::{ADMIN, IN, OUT, admin_get, cost, settled};
use common::{Server, account, metric, micros, run};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokenfab_platform::days;
use tokenfab_platform::store::{Store, unix_now};
use tokenfab_testkit::{TempPath, temp_db, temp_dir};

const PAID: &str = "soak/paid";
const FREE: &str = "soak/free";
const THINK: &str = "soak/think";
const MODELS: [&str; 3] = [PAID, FREE, THINK];

/// The longest any request may take, whole answer or stream, on a loaded machine: past
/// it the server is taken to have stalled.
const STALL: Duration = Duration::from_secs(120);
/// Clients sending at once.
const CLIENTS: u64 = 6;
/// What the accounts `soak` (the answers read whole) and `cancel` (the requests given up
/// on, whose cost only the server knows) start with per second of traffic: on the 2-core
/// machine `soak` spends up to about 1.5 a second and `cancel` less, and neither may run
/// out (a 402 on them fails the soak).
const CREDIT_PER_SECOND: u64 = 10;
/// What `poor` starts with: a few requests' worth, then 402s.
const POOR_CREDIT: &str = "0.50";

/// An R1-style template on the default model: the prompt opens the thought, so the model
/// thinks until the budget closes it, then answers.
const THINK_TEMPLATE: &str = r#"{%- for m in messages -%}{{- '<|im_start|>' + m.role + '\n' + (m.content or '') + '<|im_end|>\n' -}}{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n<think>\n' -}}{%- endif -%}"#;

const QUESTIONS: [&str; 6] = [
    "Name three colours.",
    "Write a haiku about rain.",
    "Explain what a CPU does.",
    "Tell me a story about a fox.",
    "List some fruits and their colours.",
    "What is the capital of France, and why?",
];

/// The server's configuration: a paid model at the test price, a free one of 3 requests
/// a minute, a paid thinking one. The prefix caches are small (16 MB each), so that they
/// fill within the warm-up and evict all the time after it: at the default 128 MB per
/// model a short soak would still be filling them when its RSS is compared.
fn config(dir: &TempPath) -> std::path::PathBuf {
    std::fs::write(dir.join("think.jinja"), THINK_TEMPLATE).unwrap();
    let path = dir.join("soak.toml");
    std::fs::write(
        &path,
        format!(
            r#"prefix_cache_mb = 16

[[models]]
id = "{PAID}"
source = "{model}"
input_per_million = "1000"
output_per_million = 2000

[[models]]
id = "{FREE}"
source = "{model}"
[models.limits.default]
rpm = 3

[[models]]
id = "{THINK}"
source = "{model}"
reasoning = true
chat_template_file = "think.jinja"
thinking_budget = 16
input_per_million = "1000"
output_per_million = 2000
"#,
            model = common::MODEL
        ),
    )
    .unwrap();
    path
}

/// A small deterministic generator (xorshift), so that each client's mix is the same from
/// run to run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// From `lo` to `hi`, both included.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// What an account was charged for, as its answers' `usage` says.
#[derive(Default, Debug, Clone, Copy)]
struct Spent {
    answers: i64,
    prompt: i64,
    completion: i64,
    cost: i64,
}

/// Everything the clients saw.
#[derive(Default)]
struct Tally {
    /// Responses by what was asked and status.
    statuses: BTreeMap<(&'static str, u16), u64>,
    /// Per account, the answers read whole (their usage known).
    spent: BTreeMap<&'static str, Spent>,
    finishes: BTreeMap<String, u64>,
    /// Answers cut by `max_tokens` and sent back in the next request.
    resent_cut: u64,
    /// Streams dropped mid-way, and the content deltas they had received (each at least
    /// one generated token).
    dropped: u64,
    dropped_deltas: i64,
    /// Whole answers hung up on.
    hung_up: u64,
    slowest: Duration,
    failures: Vec<String>,
}

/// One choice of an answer.
#[derive(Default, Clone)]
struct Choice {
    content: String,
    finish: Option<String>,
}

/// An answer, whole or assembled from its stream.
struct Answer {
    usage: Value,
    choices: Vec<Choice>,
}

impl Answer {
    fn whole(text: &str) -> Result<Answer, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{e}"))?;
        let choices = v["choices"]
            .as_array()
            .ok_or("no choices")?
            .iter()
            .map(|c| Choice {
                content: c["message"]["content"]
                    .as_str()
                    .or(c["text"].as_str())
                    .unwrap_or("")
                    .to_owned(),
                finish: c["finish_reason"].as_str().map(str::to_owned),
            })
            .collect();
        Ok(Answer {
            usage: v["usage"].clone(),
            choices,
        })
    }

    fn streamed(text: &str) -> Result<Answer, String> {
        let events = common::sse_events(text);
        if events.last().map(String::as_str) != Some("[DONE]") {
            return Err("the stream did not end with [DONE]".into());
        }
        let mut usage = Value::Null;
        let mut choices: Vec<Choice> = Vec::new();
        for e in &events[..events.len() - 1] {
            let chunk: Value = serde_json::from_str(e).map_err(|e| format!("{e}"))?;
            if chunk["usage"].is_object() {
                usage = chunk["usage"].clone();
            }
            for c in chunk["choices"].as_array().into_iter().flatten() {
                let i = c["index"].as_u64().ok_or("a choice without index")? as usize;
                if choices.len() <= i {
                    choices.resize(i + 1, Choice::default());
                }
                let (delta, ch) = (&c["delta"], &mut choices[i]);
                ch.content += delta["content"]
                    .as_str()
                    .or(c["text"].as_str())
                    .unwrap_or("");
                if let Some(f) = c["finish_reason"].as_str() {
                    ch.finish = Some(f.to_owned());
                }
            }
        }
        Ok(Answer { usage, choices })
    }

    fn tokens(&self, field: &str) -> i64 {
        self.usage[field].as_i64().unwrap_or(-1)
    }
}

/// The keys of the accounts.
struct Keys {
    soak: String,
    cancel: String,
    poor: String,
    free: String,
}

struct Soak {
    base: String,
    http: reqwest::Client,
    keys: Keys,
    deadline: Instant,
    tally: Mutex<Tally>,
}

/// A chat body; streamed ones ask for the usage chunk.
fn chat(model: &str, messages: Value, max_tokens: u64, stream: bool, rng: &mut Rng) -> Value {
    let mut b = json!({"model": model, "messages": messages, "max_tokens": max_tokens,
                       "temperature": 0.8, "seed": rng.below(1 << 31)});
    if stream {
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

fn ask(rng: &mut Rng) -> Value {
    json!([{"role": "user", "content": rng.pick(&QUESTIONS)}])
}

impl Soak {
    fn fail(&self, what: &str, msg: String) {
        self.tally
            .lock()
            .unwrap()
            .failures
            .push(format!("{what}: {msg}"));
    }

    /// POSTs `body` to `path` with `key` and reads the whole answer; its status and text,
    /// or `None` after recording a failure (a stall past [`STALL`], a status not in
    /// `allowed`, a 429 without `retry-after`).
    async fn send(
        &self,
        what: &'static str,
        path: &str,
        key: &str,
        body: &Value,
        allowed: &[u16],
    ) -> Option<(u16, String)> {
        let began = Instant::now();
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body);
        let done = tokio::time::timeout(STALL, async {
            let r = req.send().await?;
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            Ok::<_, reqwest::Error>((status, retry_after, r.text().await?))
        })
        .await;
        let (status, retry_after, text) = match done {
            Err(_) => {
                self.fail(what, format!("stalled for {STALL:?}: {body}"));
                return None;
            }
            Ok(Err(e)) => {
                self.fail(what, format!("{e}: {body}"));
                return None;
            }
            Ok(Ok(x)) => x,
        };
        {
            let mut tally = self.tally.lock().unwrap();
            *tally.statuses.entry((what, status)).or_default() += 1;
            tally.slowest = tally.slowest.max(began.elapsed());
        }
        if !allowed.contains(&status) || (status == 429 && !retry_after) {
            self.fail(what, format!("status {status}: {text}\nrequest: {body}"));
            return None;
        }
        Some((status, text))
    }

    /// Sends a generation and reads its answer (whole or streamed, as the body asks),
    /// checking that it has `choices` choices each with a finish reason; a 200's answer
    /// is charged to `account` here. `None` for another allowed status or a failure.
    async fn generate(
        &self,
        what: &'static str,
        path: &str,
        account: &'static str,
        body: &Value,
        choices: usize,
        allowed: &[u16],
    ) -> Option<Answer> {
        let key = match account {
            "soak" => &self.keys.soak,
            "poor" => &self.keys.poor,
            _ => &self.keys.free,
        };
        let (status, text) = self.send(what, path, key, body, allowed).await?;
        if status != 200 {
            return None;
        }
        let parsed = if body["stream"] == true {
            Answer::streamed(&text)
        } else {
            Answer::whole(&text)
        };
        let a = match parsed {
            Ok(a) if a.usage.is_object() => a,
            Ok(_) => {
                self.fail(what, format!("no usage: {text}"));
                return None;
            }
            Err(e) => {
                self.fail(what, format!("{e}: {text}"));
                return None;
            }
        };
        let max_tokens = body["max_tokens"].as_i64().unwrap();
        let completion = a.tokens("completion_tokens");
        let cut_right = a.choices.iter().all(|c| match c.finish.as_deref() {
            Some("length") => choices > 1 || completion == max_tokens,
            Some("stop" | "tool_calls") => true,
            _ => false,
        });
        if a.choices.len() != choices
            || !cut_right
            || completion > max_tokens * choices as i64
            || a.tokens("prompt_tokens") <= 0
        {
            self.fail(what, format!("a malformed answer: {text}\nrequest: {body}"));
            return None;
        }
        let mut t = self.tally.lock().unwrap();
        let s = t.spent.entry(account).or_default();
        s.answers += 1;
        s.prompt += a.tokens("prompt_tokens");
        s.completion += completion;
        if body["model"] != FREE {
            s.cost += cost(&a.usage);
        }
        for c in &a.choices {
            *t.finishes.entry(c.finish.clone().unwrap()).or_default() += 1;
        }
        Some(a)
    }

    /// One request (or conversation) of a kind drawn at random.
    async fn one(&self, rng: &mut Rng) {
        let stream = rng.below(2) == 0;
        let ok: &[u16] = &[200];
        match rng.below(100) {
            0..20 => {
                let b = chat(PAID, ask(rng), rng.range(4, 48), stream, rng);
                self.generate("chat", "/v1/chat/completions", "soak", &b, 1, ok)
                    .await;
            }
            20..28 => {
                let n = rng.range(2, 3);
                let mut b = chat(PAID, ask(rng), rng.range(4, 24), stream, rng);
                b["n"] = json!(n);
                self.generate(
                    "chat n>1",
                    "/v1/chat/completions",
                    "soak",
                    &b,
                    n as usize,
                    ok,
                )
                .await;
            }
            28..36 => self.completion(rng, stream).await,
            36..46 => self.think(rng, stream).await,
            46..62 => self.conversation(rng).await,
            62..72 => self.drop_stream(rng).await,
            72..75 => self.hang_up(rng).await,
            75..80 => self.structured(rng, stream).await,
            80..86 => self.bad(rng).await,
            86..94 => {
                let b = chat(FREE, ask(rng), rng.range(4, 16), stream, rng);
                self.generate("free", "/v1/chat/completions", "free", &b, 1, &[200, 429])
                    .await;
            }
            _ => {
                let b = chat(PAID, ask(rng), rng.range(4, 16), stream, rng);
                self.generate("poor", "/v1/chat/completions", "poor", &b, 1, &[200, 402])
                    .await;
            }
        }
    }

    async fn completion(&self, rng: &mut Rng, stream: bool) {
        let prompts = ["Red, green and", "One, two,", "The quick brown fox"];
        let mut b = json!({"model": PAID, "max_tokens": rng.range(2, 16), "temperature": 0.8,
                           "seed": rng.below(1 << 31)});
        let choices = if stream {
            b["prompt"] = json!(rng.pick(&prompts));
            b["stream"] = json!(true);
            b["stream_options"] = json!({"include_usage": true});
            1
        } else {
            let n = rng.range(1, 2);
            b["prompt"] = json!([rng.pick(&prompts), rng.pick(&prompts)]);
            b["n"] = json!(n);
            2 * n as usize
        };
        self.generate(
            "completions",
            "/v1/completions",
            "soak",
            &b,
            choices,
            &[200],
        )
        .await;
    }

    /// The thinking model with a budget of its own: the thought is at most that long.
    /// Budgets start at 8: the tag that closes a thought is 6 of SmolLM2's tokens
    /// (`\n</think>\n\n`), and the server refuses a budget smaller than 7.
    async fn think(&self, rng: &mut Rng, stream: bool) {
        let budget = rng.range(8, 16);
        let mut b = chat(THINK, ask(rng), rng.range(8, 40), stream, rng);
        b["thinking_budget"] = json!(budget);
        let Some(a) = self
            .generate("think", "/v1/chat/completions", "soak", &b, 1, &[200])
            .await
        else {
            return;
        };
        let reasoning = a.usage["completion_tokens_details"]["reasoning_tokens"]
            .as_i64()
            .unwrap_or(-1);
        if !(0..=budget as i64).contains(&reasoning) {
            self.fail(
                "think",
                format!(
                    "a thought of {reasoning} tokens on a budget of {budget}: {:?}",
                    a.usage
                ),
            );
        }
    }

    /// A conversation of up to four turns, each answer cut short and sent back: as an
    /// assistant turn followed by the user's "Go on.", or as the last message.
    async fn conversation(&self, rng: &mut Rng) {
        let model = if rng.below(3) == 0 { THINK } else { PAID };
        let mut messages = ask(rng);
        for _ in 0..rng.range(2, 4) {
            let b = chat(
                model,
                messages.clone(),
                rng.range(3, 12),
                rng.below(2) == 0,
                rng,
            );
            let Some(a) = self
                .generate(
                    "conversation",
                    "/v1/chat/completions",
                    "soak",
                    &b,
                    1,
                    &[200],
                )
                .await
            else {
                return;
            };
            let c = &a.choices[0];
            let turns = messages.as_array_mut().unwrap();
            turns.push(json!({"role": "assistant", "content": c.content}));
            if rng.below(3) != 0 {
                turns.push(json!({"role": "user", "content": "Go on."}));
            }
            if c.finish.as_deref() == Some("length") {
                self.tally.lock().unwrap().resent_cut += 1;
            }
        }
    }

    /// A long stream (one or two choices) dropped after a few content deltas.
    async fn drop_stream(&self, rng: &mut Rng) {
        let model = if rng.below(3) == 0 { THINK } else { PAID };
        let mut b = chat(model, ask(rng), 200, true, rng);
        b["n"] = json!(rng.range(1, 2));
        let want = rng.range(1, 8) as i64;
        let req = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(&self.keys.cancel)
            .json(&b);
        let got = tokio::time::timeout(STALL, async {
            let r = req.send().await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            if status != 200 {
                return Err(format!(
                    "status {status}: {}",
                    r.text().await.unwrap_or_default()
                ));
            }
            let mut stream = r.bytes_stream();
            let (mut buf, mut seen) = (String::new(), 0);
            while seen < want {
                let Some(bytes) = stream.next().await else {
                    break; // it ended before the client gave up
                };
                buf += &String::from_utf8_lossy(&bytes.map_err(|e| e.to_string())?);
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    let Some(data) = event.trim_end().strip_prefix("data: ") else {
                        continue;
                    };
                    let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                        continue; // [DONE]
                    };
                    for c in chunk["choices"].as_array().into_iter().flatten() {
                        let d = &c["delta"];
                        let text = d["content"].as_str().unwrap_or("").to_owned()
                            + d["reasoning_content"].as_str().unwrap_or("");
                        seen += i64::from(!text.is_empty());
                    }
                }
            }
            Ok(seen)
        })
        .await;
        match got {
            Err(_) => self.fail("dropped stream", format!("stalled for {STALL:?}: {b}")),
            Ok(Err(e)) => self.fail("dropped stream", format!("{e}: {b}")),
            Ok(Ok(seen)) => {
                let mut t = self.tally.lock().unwrap();
                t.dropped += 1;
                t.dropped_deltas += seen;
                *t.statuses.entry(("dropped stream", 200)).or_default() += 1;
            }
        }
    }

    /// A long whole answer the client stops waiting for after a moment (or, rarely, gets).
    async fn hang_up(&self, rng: &mut Rng) {
        let mut b = chat(PAID, ask(rng), 300, false, rng);
        b["messages"][0]["content"] = json!("Write a long story about a dragon, with chapters.");
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(&self.keys.cancel)
            .timeout(Duration::from_millis(rng.range(200, 1500)))
            .json(&b)
            .send()
            .await;
        let answered = match r {
            Ok(r) if r.status() == 200 => r.text().await.is_ok(),
            Ok(r) => {
                self.fail("hang-up", format!("status {}: {b}", r.status()));
                return;
            }
            Err(_) => false,
        };
        let mut t = self.tally.lock().unwrap();
        t.hung_up += 1;
        *t.statuses
            .entry(("hang-up", if answered { 200 } else { 0 }))
            .or_default() += 1;
    }

    /// A JSON schema answer, or a required tool call (SmolLM2's template has no tools: the
    /// fallback prompt and the call grammar).
    async fn structured(&self, rng: &mut Rng, stream: bool) {
        let mut b = chat(PAID, ask(rng), 60, stream, rng);
        if rng.below(2) == 0 {
            b["messages"][0]["content"] = json!("Describe a city you like.");
            b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "city",
                "schema": {"type": "object", "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "rating": {"type": "integer", "minimum": 1, "maximum": 5}},
                  "required": ["city", "rating"], "additionalProperties": false}}});
            let Some(a) = self
                .generate("json schema", "/v1/chat/completions", "soak", &b, 1, &[200])
                .await
            else {
                return;
            };
            let c = &a.choices[0];
            if c.finish.as_deref() == Some("stop")
                && !serde_json::from_str::<Value>(&c.content).is_ok_and(|v| v["rating"].is_i64())
            {
                self.fail(
                    "json schema",
                    format!("not the schema's JSON: {}", c.content),
                );
            }
        } else {
            b["messages"][0]["content"] = json!("What is 2 + 3?");
            b["tools"] = json!([{"type": "function", "function": {"name": "add", "parameters": {
                "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"], "additionalProperties": false}}}]);
            b["tool_choice"] = json!("required");
            b["parallel_tool_calls"] = json!(false);
            self.generate("tool call", "/v1/chat/completions", "soak", &b, 1, &[200])
                .await;
        }
    }

    /// A request the server must refuse before admitting it (with the free key, on an
    /// account without money: a 400 or 404, never a 402).
    async fn bad(&self, rng: &mut Rng) {
        let mut b = chat(PAID, ask(rng), 8, false, rng);
        let status = match rng.below(5) {
            0 => {
                b["temperature"] = json!(5);
                400
            }
            1 => {
                b["messages"] = json!([]);
                400
            }
            2 => {
                b["model"] = json!(THINK);
                b["thinking_budget"] = json!(0);
                400
            }
            3 => {
                b["n"] = json!(0);
                400
            }
            _ => {
                b["model"] = json!("soak/none");
                404
            }
        };
        self.send(
            "bad",
            "/v1/chat/completions",
            &self.keys.free,
            &b,
            &[status],
        )
        .await;
    }
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The `/metrics` page.
async fn metrics_page(s: &Server) -> String {
    reqwest::Client::new()
        .get(s.url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Per model: (running, waiting, KV blocks used, blocks the prefix cache keeps); and
/// under "ledger", the settlements queued and not yet committed.
fn engine_state(page: &str) -> BTreeMap<&'static str, [f64; 4]> {
    let queued = metric(page, "tokenfab:ledger_queue_depth", &[]).unwrap_or(f64::NAN);
    MODELS
        .iter()
        .map(|&m| {
            let get = |name: &str| metric(page, name, &[("model_name", m)]).unwrap_or(f64::NAN);
            (
                m,
                [
                    get("tokenfab:num_requests_running"),
                    get("tokenfab:num_requests_waiting"),
                    get("tokenfab:kv_blocks_used"),
                    get("tokenfab:prefix_cache_blocks"),
                ],
            )
        })
        .chain([("ledger", [0.0, queued, 0.0, 0.0])])
        .collect()
}

fn at_rest(state: &BTreeMap<&'static str, [f64; 4]>) -> bool {
    state.values().all(|[running, waiting, used, cached]| {
        *running == 0.0 && *waiting == 0.0 && used == cached
    })
}

/// Seconds of traffic: `TOKENFAB_SOAK_SECS`, else 75.
fn duration() -> Duration {
    let secs = std::env::var("TOKENFAB_SOAK_SECS").map_or(75, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("TOKENFAB_SOAK_SECS is not a number of seconds: {s}"))
    });
    Duration::from_secs(secs)
}

#[test]
fn mixed_traffic_leaves_nothing_behind() {
    let ledger = temp_db("soak");
    let db = ledger.sqlite_url();
    let length = duration();
    let credit = format!("{}.00", CREDIT_PER_SECOND * length.as_secs().max(1));
    let keys = Keys {
        soak: account(&db, "soak", &credit),
        cancel: account(&db, "cancel", &credit),
        poor: account(&db, "poor", POOR_CREDIT),
        free: account(&db, "free", "0"),
    };
    let dir = temp_dir("soak");
    let cfg = config(&dir);
    let s = Server::start(&[
        "--database",
        &db,
        "--config",
        cfg.to_str().unwrap(),
        "--admin-key",
        ADMIN,
    ]);
    let warm_up = (length / 3).min(Duration::from_secs(300));
    let first_day = unix_now().div_euclid(86_400);
    run(async {
        let start = Instant::now();
        let soak = Arc::new(Soak {
            base: s.base.clone(),
            http: reqwest::Client::new(),
            keys,
            deadline: start + length,
            tally: Mutex::new(Tally::default()),
        });
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let soak = soak.clone();
                tokio::spawn(async move {
                    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0x1000_0001));
                    while Instant::now() < soak.deadline {
                        soak.one(&mut rng).await;
                    }
                })
            })
            .collect();
        // RSS every two seconds: its level when the warm-up ends, and its highest after.
        let pid = s.pid();
        let (mut warm, mut peak) = (None, 0);
        while Instant::now() < soak.deadline {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss = rss_kib(pid);
            if start.elapsed() >= warm_up {
                warm.get_or_insert(rss);
                peak = peak.max(rss);
            }
        }
        for c in clients {
            c.await.unwrap();
        }
        let traffic = start.elapsed();

        // At rest: the engines drop what the last dropped streams held within a step.
        let rest = Instant::now() + Duration::from_secs(30);
        let mut engines = engine_state(&metrics_page(&s).await);
        while !at_rest(&engines) && Instant::now() < rest {
            tokio::time::sleep(Duration::from_millis(200)).await;
            engines = engine_state(&metrics_page(&s).await);
        }
        let end_rss = rss_kib(pid);
        let warm = warm.expect("an RSS sample after the warm-up");

        // The ledger at rest: no hold left, on the accounts or as reservation rows.
        let mut accounts = BTreeMap::new();
        for name in ["soak", "cancel", "poor", "free"] {
            accounts.insert(name, settled(&s, name).await);
        }
        let holds = Store::open(&db).await.unwrap().holds().await.unwrap();
        let last_day = unix_now().div_euclid(86_400);
        let usage = admin_get(
            &s,
            &format!(
                "/admin/usage?from={}&to={}",
                days::format(first_day),
                days::format(last_day)
            ),
        )
        .await;
        // Per account, summed over models: (requests, prompt, completion, cost).
        let mut charged: BTreeMap<String, [i64; 4]> = BTreeMap::new();
        for row in usage["data"].as_array().unwrap() {
            let c = charged
                .entry(row["account"].as_str().unwrap().to_owned())
                .or_default();
            c[0] += row["requests"].as_i64().unwrap();
            c[1] += row["prompt_tokens"].as_i64().unwrap();
            c[2] += row["completion_tokens"].as_i64().unwrap();
            c[3] += micros(&row["cost"]);
        }
        let page = metrics_page(&s).await;
        let generated: f64 = MODELS
            .iter()
            .filter_map(|&m| {
                metric(
                    &page,
                    "tokenfab:generation_tokens_total",
                    &[("model_name", m)],
                )
            })
            .sum();

        let t = soak.tally.lock().unwrap();
        let requests: u64 = t.statuses.values().sum();
        let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
        for ((_, status), n) in &t.statuses {
            *by_status.entry(*status).or_default() += n;
        }
        eprintln!("soak: {traffic:.0?} of traffic from {CLIENTS} clients, {requests} requests");
        eprintln!("  by status (0: hung up on): {by_status:?}");
        eprintln!("  by kind and status: {:?}", t.statuses);
        eprintln!("  finish reasons: {:?}", t.finishes);
        eprintln!(
            "  cut answers resent: {}; streams dropped: {} (after {} deltas); whole answers hung up on: {}",
            t.resent_cut, t.dropped, t.dropped_deltas, t.hung_up
        );
        eprintln!(
            "  tokens generated (engine): {generated}; slowest request: {:.1?}",
            t.slowest
        );
        eprintln!(
            "  RSS: {warm} KiB after the {warm_up:?} warm-up, {peak} KiB at most after it, {end_rss} KiB at rest ({:+.1}%)",
            (end_rss as f64 / warm as f64 - 1.0) * 100.0
        );
        eprintln!("  engines at rest [running, waiting, KV used, prefix-cached]: {engines:?}");
        eprintln!("  reservation rows and total: {holds:?}");
        for (name, (bal, held)) in &accounts {
            eprintln!(
                "  {name}: balance {bal} µ, reserved {held} µ; ledger [requests, prompt, completion, cost µ] {:?}; answers read {:?}",
                charged.get(*name),
                t.spent.get(*name)
            );
        }

        let mut failed: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &t.failures {
            *failed.entry(f.split(':').next().unwrap()).or_default() += 1;
        }
        assert!(
            t.failures.is_empty(),
            "failures by kind {failed:?}; the first ones:\n{}",
            t.failures[..t.failures.len().min(10)].join("\n---\n")
        );
        assert!(
            at_rest(&engines),
            "the engines did not come to rest: {engines:?}"
        );
        assert_eq!(
            holds,
            (0, tokenfab_platform::money::Money(0)),
            "reservations left"
        );
        assert!(
            accounts.values().all(|&(_, held)| held == 0),
            "held at rest: {accounts:?}"
        );
        // The answers read whole: charged exactly what their usage says, and no other
        // request charged to those accounts.
        let credit = micros(&json!(credit));
        for (name, initial) in [("soak", credit), ("poor", micros(&json!(POOR_CREDIT)))] {
            let spent = t.spent.get(name).copied().unwrap_or_default();
            let ledger = charged.get(name).copied().unwrap_or_default();
            assert_eq!(
                ledger,
                [spent.answers, spent.prompt, spent.completion, spent.cost],
                "{name}: the ledger against the answers"
            );
            assert_eq!(initial - accounts[name].0, spent.cost, "{name}'s balance");
        }
        // The requests given up on: each charged for what it generated, which is at least
        // what the client saw of it, and the balance down by exactly the charges.
        let gone = charged.get("cancel").copied().unwrap_or_default();
        assert!(
            (t.dropped as i64..=(t.dropped + t.hung_up) as i64).contains(&gone[0]),
            "{gone:?}: {} dropped streams, {} hang-ups",
            t.dropped,
            t.hung_up
        );
        assert_eq!(gone[3], gone[1] * IN + gone[2] * OUT, "cancel's charges");
        assert!(gone[2] >= t.dropped_deltas, "{gone:?}");
        assert_eq!(credit - accounts["cancel"].0, gone[3], "cancel's balance");
        // The free model costs nothing: its answers are in the ledger, uncharged.
        let free = t.spent.get("free").copied().unwrap_or_default();
        let ledger = charged.get("free").copied().unwrap_or_default();
        assert_eq!(
            ledger,
            [free.answers, free.prompt, free.completion, 0],
            "free: the ledger against the answers"
        );
        assert_eq!(accounts["free"].0, 0);
        assert!(
            end_rss as f64 <= warm as f64 * 1.10,
            "RSS grew from {warm} KiB after the warm-up to {end_rss} KiB"
        );
        // The mix did what it is for.
        for status in [200, 400, 402, 404, 429] {
            assert!(
                by_status.contains_key(&status),
                "no {status} in {by_status:?}"
            );
        }
        assert!(
            t.resent_cut > 0 && t.dropped > 0,
            "nothing cut and resent, or dropped"
        );
    });
}
