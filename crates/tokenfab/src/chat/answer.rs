//! One answer: the streamed request, its server-sent events, and what reaches the screen.
//! Returning from [`stream`] early (Ctrl-C) drops the response body, which closes the
//! connection: that is how the server learns to stop generating.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokenfab_upstream::http::{Client, success};
use tokenfab_upstream::sse::Events;

const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

/// The longest error answer read whole.
const MAX_ERROR: usize = 64 * 1024;

/// How long the server may take to begin its answer (a long prompt on a slow machine).
const HEAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Writes the deltas as they come: the thought dimmed where colour is on, a blank line,
/// then the answer. It remembers the answer's text, because what was shown is what goes
/// into the conversation, also when the answer was stopped.
pub struct Printer<W: Write> {
    out: W,
    color: bool,
    in_thought: bool,
    /// Whether the cursor is at the start of a line (nothing written counts as one).
    line_start: bool,
    shown: String,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, color: bool) -> Printer<W> {
        Printer {
            out,
            color,
            in_thought: false,
            line_start: true,
            shown: String::new(),
        }
    }

    pub fn thought(&mut self, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if !self.in_thought && self.color {
            self.out.write_all(DIM.as_bytes())?;
        }
        self.in_thought = true;
        self.write(text)
    }

    pub fn content(&mut self, text: &str) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if self.in_thought {
            self.end_thought()?;
            self.out.write_all(b"\n")?;
        }
        self.shown.push_str(text);
        self.write(text)
    }

    /// Ends the answer on a line of its own, colour off; the answer's text shown.
    pub fn end(mut self) -> io::Result<String> {
        self.end_thought()?;
        self.out.flush()?;
        Ok(self.shown)
    }

    fn end_thought(&mut self) -> io::Result<()> {
        if self.in_thought && self.color {
            self.out.write_all(RESET.as_bytes())?;
        }
        self.in_thought = false;
        if !self.line_start {
            self.write("\n")?;
        }
        Ok(())
    }

    fn write(&mut self, text: &str) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        self.line_start = text.ends_with('\n');
        Ok(())
    }

    /// What one stream chunk adds: its first choice's thought and text, or its usage. A
    /// server that fails mid-stream sends an `error` chunk, returned as the error.
    pub fn chunk(&mut self, chunk: &Value, stats: &mut Stats) -> anyhow::Result<()> {
        if let Some(e) = chunk.get("error") {
            anyhow::bail!("{}", error_message(e));
        }
        if let Some(delta) = chunk["choices"].get(0).map(|c| &c["delta"]) {
            // vLLM spells the thought `reasoning`.
            let thought = delta["reasoning_content"]
                .as_str()
                .or(delta["reasoning"].as_str());
            let text = delta["content"].as_str();
            if thought.is_some_and(|t| !t.is_empty()) || text.is_some_and(|t| !t.is_empty()) {
                stats.first.get_or_insert_with(|| stats.start.elapsed());
            }
            self.thought(thought.unwrap_or_default())?;
            self.content(text.unwrap_or_default())?;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            stats.usage = Some((
                usage["prompt_tokens"].as_u64().unwrap_or(0),
                usage["completion_tokens"].as_u64().unwrap_or(0),
            ));
        }
        Ok(())
    }
}

/// What the line after an answer reports.
pub struct Stats {
    start: Instant,
    /// From sending the request to the first thought or text.
    first: Option<Duration>,
    total: Duration,
    /// `(prompt, completion)` tokens, when the server sent its usage.
    usage: Option<(u64, u64)>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            start: Instant::now(),
            first: None,
            total: Duration::ZERO,
            usage: None,
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.total.as_secs_f64();
        match self.usage {
            Some((_, completion)) => write!(
                f,
                "{completion} tokens in {secs:.2} s, {:.1} tokens/s",
                completion as f64 / secs.max(1e-3)
            )?,
            None => write!(f, "{secs:.2} s (the server sent no token count)")?,
        }
        if let Some(first) = self.first {
            write!(f, "; first after {:.2} s", first.as_secs_f64())?;
        }
        if let Some((prompt, _)) = self.usage {
            write!(f, "; prompt {prompt} tokens")?;
        }
        Ok(())
    }
}

/// Posts a streaming chat request and prints the answer as it arrives.
pub async fn stream<W: Write>(
    client: &Client,
    body: &Value,
    printer: &mut Printer<W>,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::new();
    let response = client
        .post(
            "chat/completions",
            body.to_string().as_bytes(),
            stats.start + HEAD_TIMEOUT,
        )
        .await?;
    let mut body = response.body;
    if !success(response.status) {
        let text = body.bytes(MAX_ERROR).await.unwrap_or_default();
        let why = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").map(error_message))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_owned());
        anyhow::bail!("the server answered {}: {why}", response.status);
    }
    let mut events = Events::default();
    let mut done = false;
    let mut on_event = |data: String, printer: &mut Printer<W>| -> anyhow::Result<()> {
        let data = data.trim();
        if data == "[DONE]" {
            done = true;
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data)
            .with_context(|| format!("a stream chunk is not JSON: {data}"))?;
        printer.chunk(&chunk, &mut stats)
    };
    while let Some(bytes) = body.chunk().await.context("reading the answer")? {
        for data in events.push(&bytes)? {
            on_event(data, printer)?;
        }
    }
    if let Some(data) = events.finish()? {
        on_event(data, printer)?;
    }
    anyhow::ensure!(done, "the answer ended without `data: [DONE]`");
    stats.total = stats.start.elapsed();
    Ok(stats)
}

/// An OpenAI-shaped error's message (`{"message", "type", "code"}`), or the value as
/// given when it has none.
fn error_message(e: &Value) -> String {
    match e["message"].as_str() {
        Some(m) => m.to_owned(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn delta(thought: Option<&str>, text: Option<&str>) -> Value {
        json!({"choices": [{"index": 0, "delta": {"reasoning_content": thought, "content": text}}]})
    }

    fn printed(color: bool) -> (String, String, Stats) {
        let mut out = Vec::new();
        let mut stats = Stats::new();
        let mut p = Printer::new(&mut out, color);
        for c in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            delta(Some("Let me"), None),
            delta(Some(" think."), None),
            delta(None, Some("Four")),
            delta(None, Some(".")),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 6}}),
        ] {
            p.chunk(&c, &mut stats).unwrap();
        }
        let shown = p.end().unwrap();
        (String::from_utf8(out).unwrap(), shown, stats)
    }

    #[test]
    fn the_thought_is_dimmed_on_a_terminal_only() {
        let (tty, shown, stats) = printed(true);
        assert_eq!(tty, "\x1b[2mLet me think.\x1b[0m\n\nFour.\n");
        assert_eq!(shown, "Four.");
        assert_eq!(stats.usage, Some((9, 6)));
        assert!(stats.first.is_some());
        let (piped, shown, _) = printed(false);
        assert_eq!(piped, "Let me think.\n\nFour.\n");
        assert_eq!(shown, "Four.");
    }

    #[test]
    fn a_stopped_thought_turns_the_colour_off() {
        let mut out = Vec::new();
        let mut p = Printer::new(&mut out, true);
        p.thought("Hmm\n").unwrap();
        assert_eq!(p.end().unwrap(), "");
        assert_eq!(out, b"\x1b[2mHmm\n\x1b[0m");
    }

    #[test]
    fn vllm_reasoning_and_streamed_errors() {
        let mut out = Vec::new();
        let mut stats = Stats::new();
        let mut p = Printer::new(&mut out, false);
        p.chunk(
            &json!({"choices": [{"delta": {"reasoning": "r"}}]}),
            &mut stats,
        )
        .unwrap();
        let e = p
            .chunk(
                &json!({"error": {"message": "model overloaded", "type": "x"}}),
                &mut stats,
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "model overloaded");
        p.end().unwrap();
        assert_eq!(out, b"r\n");
    }
}
