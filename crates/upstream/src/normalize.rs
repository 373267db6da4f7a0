//! Upstream answers made to look like tokenfab's own.
//!
//! - `model` is the id the client sent, not the upstream's name.
//! - The thought is in `reasoning_content` and the answer in `content`, whatever the
//!   upstream did: `reasoning_content` (DeepSeek, SGLang) is kept, `reasoning` (vLLM's
//!   newer field) is renamed, and a `<think>…</think>` left inline in `content` (an
//!   upstream without a reasoning parser) is split out with tokenfab's own splitter (`tokenfab-text`), the
//!   same code that splits local models' output, so tags cut across chunks never leak.
//! - Usage is read with [`TokenUsage::from_reported`](tokenfab_wire::usage::TokenUsage)
//!   and written back from it, as for local models.
//! - Streams: the upstream is always asked for usage; its usage chunk is held back and the
//!   server sends one (the upstream's or a counted one) only when the client asked.
//!   Chunks left with nothing to say after the split are dropped.
//! - Tool calls as OpenAI shapes them, whatever the upstream sent: every call has an `id`
//!   (one is made up when missing) and `type: "function"`, `arguments` is JSON text (an
//!   object is serialized), and streamed call deltas have consistent `index`es (a missing
//!   one is the call's by `id`, or the latest call's), with `id` and `type` on each call's
//!   first delta.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tokenfab_text::reasoning::{ReasoningSplitter, Split, ThinkTags, split_complete};

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Option<String> {
    match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(Value::Null) | None => None,
        Some(other) => {
            obj.insert(key.to_owned(), other);
            None
        }
    }
}

/// Moves vLLM's `reasoning` into `reasoning_content`; returns the thought text so far.
fn thought_field(obj: &mut Map<String, Value>) -> String {
    let mut thought = take_string(obj, "reasoning_content").unwrap_or_default();
    if let Some(r) = take_string(obj, "reasoning") {
        thought.push_str(&r);
    }
    thought
}

/// A made-up tool-call id, for an upstream that sent none.
fn new_call_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "call_{nanos:016x}{:08x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `function.arguments` as JSON text (some servers send the object).
fn arguments_as_text(call: &mut Map<String, Value>) {
    if let Some(a) = call
        .get_mut("function")
        .and_then(Value::as_object_mut)
        .and_then(|f| f.get_mut("arguments"))
        && !a.is_string()
        && !a.is_null()
    {
        *a = Value::String(a.to_string());
    }
}

/// A whole answer's tool calls, each with an id, a type and text arguments.
fn normalize_calls(msg: &mut Map<String, Value>) {
    let Some(calls) = msg.get_mut("tool_calls").and_then(Value::as_array_mut) else {
        return;
    };
    for call in calls.iter_mut().filter_map(Value::as_object_mut) {
        if !call.get("id").is_some_and(Value::is_string) {
            call.insert("id".into(), Value::String(new_call_id()));
        }
        call.insert("type".into(), Value::String("function".into()));
        arguments_as_text(call);
    }
}

/// Rewrites a non-streamed chat completion in place: the client's model id, and each
/// message's thought in `reasoning_content`. `tags`: split `<think>` out of `content`.
pub fn completion(v: &mut Value, client_model: &str, tags: Option<&ThinkTags>) {
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".into(), Value::String(client_model.to_owned()));
    }
    let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices {
        let Some(msg) = choice.get_mut("message").and_then(Value::as_object_mut) else {
            continue;
        };
        let mut thought = thought_field(msg);
        if let Some(content) = take_string(msg, "content") {
            let split = match tags {
                Some(t) => split_complete(&content, t, false),
                None => Split {
                    reasoning: String::new(),
                    content,
                },
            };
            thought.push_str(&split.reasoning);
            msg.insert("content".into(), Value::String(split.content));
        }
        if !thought.is_empty() {
            msg.insert("reasoning_content".into(), Value::String(thought));
        }
        normalize_calls(msg);
    }
}

/// Why a stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the upstream sent an event that is not JSON: {0}")]
    NotJson(String),
    /// The upstream reported an error inside the stream; its message stays in the logs.
    #[error("the upstream reported an error mid-stream")]
    Upstream(String),
}

/// Rewrites a chat stream (or a legacy completion's, whose choices carry `text`) event by
/// event.
pub struct StreamFilter {
    client_model: String,
    tags: Option<ThinkTags>,
    splitters: HashMap<u64, ReasoningSplitter>,
    /// The upstream's last usage report.
    usage: Option<Value>,
    /// `id`, `object`, `created` and `system_fingerprint` of the last chunk, for the
    /// usage chunk.
    meta: Map<String, Value>,
    /// The thought and the answer passed on, for counting what the upstream did not.
    thought: String,
    answer: String,
    done: bool,
    /// A choice finished by its length limit.
    cut: bool,
    /// Per choice, the ids of its tool calls so far, by index.
    calls: HashMap<u64, Vec<String>>,
}

impl StreamFilter {
    pub fn new(client_model: &str, tags: Option<ThinkTags>) -> StreamFilter {
        StreamFilter {
            client_model: client_model.to_owned(),
            tags,
            splitters: HashMap::new(),
            usage: None,
            meta: Map::new(),
            thought: String::new(),
            answer: String::new(),
            done: false,
            cut: false,
            calls: HashMap::new(),
        }
    }

    /// A delta's tool-call parts with consistent indices, and an id and type on each
    /// call's first part.
    fn call_deltas(&mut self, choice: u64, delta: &mut Map<String, Value>) {
        let Some(parts) = delta.get_mut("tool_calls").and_then(Value::as_array_mut) else {
            return;
        };
        let known = self.calls.entry(choice).or_default();
        for part in parts.iter_mut().filter_map(Value::as_object_mut) {
            let id = part.get("id").and_then(Value::as_str).map(str::to_owned);
            let index = match part.get("index").and_then(Value::as_u64) {
                Some(i) => i as usize,
                None => match &id {
                    Some(id) => known.iter().position(|k| k == id).unwrap_or(known.len()),
                    None => known.len().saturating_sub(1),
                },
            };
            part.insert("index".into(), json!(index));
            if index >= known.len() {
                let id = id.unwrap_or_else(new_call_id);
                known.resize(index + 1, String::new());
                known[index] = id.clone();
                part.insert("id".into(), Value::String(id));
                part.insert("type".into(), Value::String("function".into()));
            }
            arguments_as_text(part);
        }
    }

    /// One event's payload in, the payload to pass on out (`None`: nothing to send).
    pub fn event(&mut self, data: &str) -> Result<Option<String>, StreamError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let mut v: Value =
            serde_json::from_str(data).map_err(|e| StreamError::NotJson(e.to_string()))?;
        let Some(obj) = v.as_object_mut() else {
            return Err(StreamError::NotJson("not an object".into()));
        };
        if let Some(err) = obj.get("error").filter(|e| !e.is_null()) {
            return Err(StreamError::Upstream(err.to_string()));
        }
        obj.insert("model".into(), Value::String(self.client_model.clone()));
        for key in ["id", "object", "created", "system_fingerprint"] {
            if let Some(x) = obj.get(key) {
                self.meta.insert(key.into(), x.clone());
            }
        }
        if let Some(u) = obj.remove("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u);
        }
        let Some(choices) = obj.get_mut("choices").and_then(Value::as_array_mut) else {
            return Ok(None);
        };
        if choices.is_empty() {
            // The usage chunk, held back (see the module doc).
            return Ok(None);
        }
        choices.retain_mut(|c| self.choice(c));
        if choices.is_empty() {
            return Ok(None);
        }
        Ok(Some(v.to_string()))
    }

    /// Normalizes one choice of a chunk; false when it has nothing left to say.
    fn choice(&mut self, c: &mut Value) -> bool {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
        let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
        self.cut |= c["finish_reason"] == "length";
        let says_more = c.get("logprobs").is_some_and(|l| !l.is_null());
        let Some(delta) = c.get_mut("delta").and_then(Value::as_object_mut) else {
            // A legacy completion's chunk: its text passes as it is.
            let text = c.get("text").and_then(Value::as_str).unwrap_or_default();
            self.answer.push_str(text);
            return finished || says_more || !text.is_empty();
        };
        let mut split = Split {
            reasoning: thought_field(delta),
            content: String::new(),
        };
        self.call_deltas(index, delta);
        if let Some(content) = take_string(delta, "content") {
            match &self.tags {
                Some(tags) => {
                    let s = self
                        .splitters
                        .entry(index)
                        .or_insert_with(|| ReasoningSplitter::new(tags.clone(), false))
                        .push(&content);
                    split.reasoning.push_str(&s.reasoning);
                    split.content = s.content;
                }
                None => split.content = content,
            }
        }
        // A finished choice's splitter goes: an upstream that says more for the choice
        // afterwards (none should) has it split afresh instead of fed to a finished one.
        if finished && let Some(mut s) = self.splitters.remove(&index) {
            let rest = s.finish();
            split.reasoning.push_str(&rest.reasoning);
            split.content.push_str(&rest.content);
        }
        self.thought.push_str(&split.reasoning);
        self.answer.push_str(&split.content);
        if !split.reasoning.is_empty() {
            delta.insert("reasoning_content".into(), Value::String(split.reasoning));
        }
        if !split.content.is_empty() {
            delta.insert("content".into(), Value::String(split.content));
        }
        let delta_len = c["delta"].as_object().map_or(0, Map::len);
        finished || says_more || delta_len > 0
    }

    /// Whether the upstream ended the stream with `[DONE]`.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Whether a choice was cut by its length limit.
    pub fn cut(&self) -> bool {
        self.cut
    }

    /// The upstream's usage, if it reported any.
    pub fn usage(&self) -> Option<&Value> {
        self.usage.as_ref()
    }

    /// The thought passed on so far (every choice's).
    pub fn thought(&self) -> &str {
        &self.thought
    }

    /// The answer passed on so far (every choice's).
    pub fn answer(&self) -> &str {
        &self.answer
    }

    /// The usage chunk to end a stream with.
    pub fn usage_chunk(&self, usage: Value) -> String {
        let mut obj = self.meta.clone();
        obj.entry("object")
            .or_insert(json!("chat.completion.chunk"));
        obj.insert("model".into(), Value::String(self.client_model.clone()));
        obj.insert("choices".into(), json!([]));
        obj.insert("usage".into(), usage);
        Value::Object(obj).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenfab_wire::usage::TokenUsage;

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        json!({"id": "c1", "model": "up", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            .to_string()
    }

    /// Runs `events` through a filter; returns (thought, answer, chunks passed on).
    fn run(events: &[String]) -> (String, String, Vec<Value>) {
        let mut f = StreamFilter::new("client/model", Some(ThinkTags::default()));
        let mut out = Vec::new();
        for e in events {
            if let Some(s) = f.event(e).unwrap() {
                out.push(serde_json::from_str::<Value>(&s).unwrap());
            }
        }
        let field = |k: &str| -> String {
            out.iter()
                .filter_map(|c| c["choices"][0]["delta"][k].as_str())
                .collect()
        };
        (field("reasoning_content"), field("content"), out)
    }

    #[test]
    fn every_dialect_ends_up_in_reasoning_content() {
        let inline: Vec<String> = ["<thi", "nk>I rea", "son.</th", "ink>The ", "answer."]
            .iter()
            .map(|p| chunk(json!({ "content": p }), None))
            .chain([chunk(json!({}), Some("stop"))])
            .collect();
        let field = |name: &str| -> Vec<String> {
            vec![
                chunk(json!({ "role": "assistant", "content": "" }), None),
                chunk(json!({ name: "I reason." }), None),
                chunk(json!({ "content": "The answer." }), None),
                chunk(json!({}), Some("stop")),
            ]
        };
        for events in [inline, field("reasoning"), field("reasoning_content")] {
            let (thought, answer, chunks) = run(&events);
            assert_eq!(
                (thought.as_str(), answer.as_str()),
                ("I reason.", "The answer.")
            );
            for c in &chunks {
                assert_eq!(c["model"], "client/model");
                let d = &c["choices"][0]["delta"];
                assert!(d.get("reasoning").is_none(), "{c}");
                assert!(!c.to_string().contains("think>"), "{c}");
            }
            assert_eq!(
                chunks.last().unwrap()["choices"][0]["finish_reason"],
                "stop"
            );
        }
    }

    /// Found by the upstream fuzz target: text for a choice after its `finish_reason` went
    /// to a finished splitter (a debug assertion; dropped in release builds).
    #[test]
    fn text_after_a_choice_finished_is_passed_on_not_dropped() {
        let events = [
            chunk(json!({ "content": "<think>a</think>b" }), Some("stop")),
            chunk(json!({ "content": "c" }), None),
        ];
        let (thought, answer, _) = run(&events);
        assert_eq!((thought.as_str(), answer.as_str()), ("a", "bc"));
    }

    #[test]
    fn usage_is_held_back_and_errors_stop_the_stream() {
        let mut f = StreamFilter::new("m", None);
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5});
        let ev = json!({"id": "x", "choices": [], "usage": usage}).to_string();
        assert!(f.event(&ev).unwrap().is_none());
        let reported = TokenUsage::from_reported(f.usage().unwrap()).unwrap();
        assert_eq!(reported.completion, 2);
        assert!(f.event("[DONE]").unwrap().is_none() && f.done());
        let end: Value = serde_json::from_str(&f.usage_chunk(usage.clone())).unwrap();
        assert_eq!((end["id"].as_str(), &end["usage"]), (Some("x"), &usage));
        assert!(matches!(
            f.event(r#"{"error":{"message":"boom"}}"#),
            Err(StreamError::Upstream(_))
        ));
    }

    /// Tool calls from an upstream that leaves out ids, indices or sends object
    /// arguments come out in OpenAI's shape.
    #[test]
    fn tool_call_deltas_are_made_consistent() {
        let part = |v: Value| chunk(json!({ "tool_calls": [v] }), None);
        let events = [
            part(json!({"function": {"name": "f", "arguments": ""}})),
            part(json!({"function": {"arguments": "{\"a\":"}})),
            part(json!({"function": {"arguments": "1}"}})),
            part(json!({"id": "up_2", "function": {"name": "g", "arguments": {"b": 2}}})),
            chunk(json!({}), Some("tool_calls")),
        ];
        let (_, _, chunks) = run(&events);
        let parts: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
            .collect();
        let idx: Vec<u64> = parts.iter().map(|p| p["index"].as_u64().unwrap()).collect();
        assert_eq!(idx, [0, 0, 0, 1]);
        assert!(parts[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(
            (parts[0]["type"].as_str(), parts[1].get("id")),
            (Some("function"), None)
        );
        assert_eq!(
            (parts[3]["id"].as_str(), parts[3]["type"].as_str()),
            (Some("up_2"), Some("function"))
        );
        assert_eq!(parts[3]["function"]["arguments"], "{\"b\":2}");
        let args: String = parts[..3]
            .iter()
            .filter_map(|p| p["function"]["arguments"].as_str())
            .collect();
        assert_eq!(args, "{\"a\":1}");

        let mut v = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}}]});
        completion(&mut v, "m", None);
        let call = &v["choices"][0]["message"]["tool_calls"][0];
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(
            (
                call["type"].as_str(),
                call["function"]["arguments"].as_str()
            ),
            (Some("function"), Some("{\"a\":1}"))
        );
    }

    #[test]
    fn plain_completions_are_normalized() {
        let mut v = json!({"model": "up", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "<think>I reason.</think>The answer."}},
            {"index": 1, "message": {"role": "assistant", "reasoning": "I reason.", "content": "The answer."}}
        ]});
        completion(&mut v, "client/model", Some(&ThinkTags::default()));
        assert_eq!(v["model"], "client/model");
        for c in v["choices"].as_array().unwrap() {
            assert_eq!(c["message"]["reasoning_content"], "I reason.");
            assert_eq!(c["message"]["content"], "The answer.");
            assert!(c["message"].get("reasoning").is_none());
        }
    }
}
