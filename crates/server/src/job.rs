//! The one place where a request becomes engine jobs: every field is validated (a 400
//! names the field), the prompt is built (a chat conversation rendered through the model's
//! template; a completion's text, token ids or fill-in-the-middle parts), tokenized, and
//! checked against the context window. Chat and completions share the sampling, stop and
//! `max_tokens` steps ([`Knobs`], [`sampled`], [`max_tokens`]) and the job they build
//! ([`Job`]); [`completion`] holds what only completions have.

pub mod completion;
mod structured;
mod tools;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};
use tokenfab_engine::loader::ReasoningSpec;
use tokenfab_engine::sampler::{Rng, SamplingParams};
use tokenfab_engine::scheduler::GenerateRequest;
use tokenfab_engine::template::TemplateMessage;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_text::tools::ToolFormat;
use tokenfab_wire::chat::{
    ChatCompletionRequest, ChatMessage, MessageContent, Role, StopSpec, StreamOptions,
};

use crate::error::HttpError;
use crate::fold::ToolOffer;
use crate::routes::typed;
use crate::state::{Limits, ServedModel};
use tools::Markers;

/// Most stop strings per request (OpenAI's limit).
const MAX_STOP: usize = 4;
/// Most alternatives per token in `top_logprobs` (OpenAI's limit).
const MAX_TOP_LOGPROBS: i64 = 20;

/// A validated request, ready to submit.
pub struct Job {
    /// The id the client used.
    pub model_id: String,
    pub model: Arc<ServedModel>,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    /// Every prompt's tokens, summed (what is billed as input).
    pub prompt_tokens: usize,
    /// Each prompt's tokens, in order: a chat has one prompt, a completion batch several.
    pub prompts: Vec<usize>,
    /// One engine request per choice: `choices.len() / prompts.len()` per prompt, prompt
    /// after prompt.
    pub choices: Vec<GenerateRequest>,
    /// The tools offered, whose calls the answers are read for.
    pub tool_calls: Option<ToolOffer>,
}

/// A chat request's job.
pub type ChatJob = Job;

fn bad(param: &str, msg: impl Into<String>) -> HttpError {
    HttpError::bad_request(Some(param), msg)
}

fn check_range(param: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), HttpError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(bad(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {x}"),
        )),
        _ => Ok(()),
    }
}

/// A fresh seed per request when the client gives none: distinct across requests and
/// processes without needing an OS entropy crate.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    Rng::new(nanos ^ c.rotate_left(32) ^ u64::from(std::process::id())).next_u64()
}

fn message_text(i: usize, m: &ChatMessage) -> Result<String, HttpError> {
    match &m.content {
        None => Ok(String::new()),
        Some(MessageContent::Text(s)) => Ok(s.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(bad(
                        &format!("messages[{i}].content"),
                        format!(
                            "content parts of type `{}` are not supported by this text model; send `text` parts",
                            p.kind
                        ),
                    ));
                }
                out.push_str(p.text.as_deref().unwrap_or(""));
            }
            Ok(out)
        }
    }
}

/// An earlier turn's tool call as templates read it: OpenAI sends `arguments` as JSON
/// text, templates write it out with `tojson`, so it goes in parsed (as vLLM and
/// llama.cpp hand it over); text that is not JSON stays text.
fn template_call(call: &Value) -> Value {
    let mut call = call.clone();
    if let Some(args) = call.pointer_mut("/function/arguments")
        && let Some(parsed) = args
            .as_str()
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
    {
        *args = parsed;
    }
    call
}

pub(crate) fn template_messages(
    messages: &[ChatMessage],
) -> Result<Vec<TemplateMessage>, HttpError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut extra = Map::new();
            if let Some(r) = m.reasoning_content.as_ref().or(m.reasoning.as_ref()) {
                extra.insert("reasoning_content".into(), Value::String(r.clone()));
            }
            if let Some(n) = &m.name {
                extra.insert("name".into(), Value::String(n.clone()));
            }
            if let Some(tc) = &m.tool_calls {
                extra.insert(
                    "tool_calls".into(),
                    Value::Array(tc.iter().map(template_call).collect()),
                );
            }
            if let Some(id) = &m.tool_call_id {
                extra.insert("tool_call_id".into(), Value::String(id.clone()));
            }
            if m.role == Role::User && m.content.is_none() {
                return Err(bad(
                    &format!("messages[{i}].content"),
                    "a user message needs `content`",
                ));
            }
            Ok(TemplateMessage {
                role: m.role.template_name().into(),
                content: message_text(i, m)?,
                extra,
            })
        })
        .collect()
}

/// Request fields that change what the model must produce and that this server does not
/// honour yet, with what to send instead. Refused by name: ignoring one would answer an
/// agent's constrained request with unconstrained prose and a 200.
const UNHONOURED: &[(&str, &str)] = &[
    (
        "functions",
        "the legacy `functions` field is not supported; send `tools`",
    ),
    (
        "function_call",
        "the legacy `function_call` field is not supported; send `tool_choice`",
    ),
    ("audio", "this text model cannot answer with `audio`"),
    (
        "web_search_options",
        "web search (`web_search_options`) is not available",
    ),
];

/// Refuses, by name, a field in [`UNHONOURED`] (a `null` one says nothing and passes),
/// and `modalities` that ask for anything but text.
pub(crate) fn refuse_unhonoured(body: &Value) -> Result<(), HttpError> {
    for (field, why) in UNHONOURED {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(bad(
                field,
                format!("{why}; send the request without `{field}`"),
            ));
        }
    }
    match body.get("modalities") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(m)) if m.iter().all(|x| x == "text") => Ok(()),
        Some(_) => Err(bad(
            "modalities",
            "this text model answers in `text` only; send `modalities: [\"text\"]` or leave it out",
        )),
    }
}

/// The sampling, stop and length fields chat and completions share, as a request sent
/// them.
#[derive(Debug)]
pub(crate) struct Knobs<'a> {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub n: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<&'a StopSpec>,
    /// The length field's name and value, if given.
    pub max_tokens: Option<(&'static str, i64)>,
}

/// What a request asks for, checked without the model.
#[derive(Debug)]
pub(crate) struct Asked {
    sampling: SamplingParams,
    n: u64,
    seed: Option<u64>,
    stop: Vec<String>,
    logprobs: bool,
    top_logprobs: usize,
    /// `max_completion_tokens` or `max_tokens` (the field's name and value), if given.
    max_tokens: Option<(&'static str, i64)>,
}

/// Validates a chat request's fields that need no model, and refuses what cannot be
/// honoured.
fn asked(req: &ChatCompletionRequest, limits: &Limits) -> Result<Asked, HttpError> {
    let max_tokens = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => Some(("max_completion_tokens", m)),
        (None, m) => m.map(|m| ("max_tokens", m)),
    };
    let knobs = Knobs {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
        repetition_penalty: req.repetition_penalty,
        n: req.n,
        seed: req.seed,
        stop: req.stop.as_ref(),
        max_tokens,
    };
    let mut asked = sampled(&knobs, limits)?;
    let logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = match req.top_logprobs {
        None => 0,
        Some(_) if !logprobs => {
            return Err(bad(
                "top_logprobs",
                "`top_logprobs` requires `logprobs: true`",
            ));
        }
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => k as usize,
        Some(k) => {
            return Err(bad(
                "top_logprobs",
                format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
            ));
        }
    };
    asked.logprobs = logprobs;
    asked.top_logprobs = top_logprobs;
    Ok(asked)
}

/// Validates the sampling, stop and length fields every generating endpoint shares.
pub(crate) fn sampled(req: &Knobs, limits: &Limits) -> Result<Asked, HttpError> {
    check_range("temperature", req.temperature, 0.0, 2.0)?;
    check_range("top_p", req.top_p, 0.0, 1.0)?;
    if req.top_p == Some(0.0) {
        return Err(bad("top_p", "`top_p` must be greater than 0"));
    }
    check_range("min_p", req.min_p, 0.0, 1.0)?;
    check_range("frequency_penalty", req.frequency_penalty, -2.0, 2.0)?;
    check_range("presence_penalty", req.presence_penalty, -2.0, 2.0)?;
    check_range("repetition_penalty", req.repetition_penalty, 0.01, 10.0)?;
    let top_k = match req.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(bad(
                "top_k",
                format!("`top_k` must be -1 (off) or positive, got {k}"),
            ));
        }
    };
    let n = req.n.unwrap_or(1);
    if n < 1 || n as usize > limits.max_n {
        return Err(bad(
            "n",
            format!("`n` must be between 1 and {}, got {n}", limits.max_n),
        ));
    }
    let stop = req.stop.cloned().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP {
        return Err(bad(
            "stop",
            format!(
                "`stop` takes at most {MAX_STOP} sequences, got {}",
                stop.len()
            ),
        ));
    }
    Ok(Asked {
        sampling: SamplingParams {
            temperature: req.temperature.unwrap_or(1.0),
            top_p: req.top_p.unwrap_or(1.0),
            top_k,
            min_p: req.min_p.unwrap_or(0.0),
            frequency_penalty: req.frequency_penalty.unwrap_or(0.0),
            presence_penalty: req.presence_penalty.unwrap_or(0.0),
            repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
            seed: None,
            logit_bias: HashMap::new(),
        },
        n: n as u64,
        seed: req.seed.map(|s| s as u64),
        stop,
        logprobs: false,
        top_logprobs: 0,
        max_tokens: req.max_tokens,
    })
}

/// `logit_bias` checked against the model's vocabulary.
pub(crate) fn logit_bias(
    bias: Option<&HashMap<String, f32>>,
    vocab_size: usize,
) -> Result<HashMap<u32, f32>, HttpError> {
    let mut out = HashMap::new();
    for (k, v) in bias.into_iter().flatten() {
        let id: u32 = k
            .parse()
            .ok()
            .filter(|&id: &u32| (id as usize) < vocab_size)
            .ok_or_else(|| {
                bad(
                    "logit_bias",
                    format!("`logit_bias` key `{k}` is not a token id of this model"),
                )
            })?;
        if !(-100.0..=100.0).contains(v) {
            return Err(bad(
                "logit_bias",
                format!("`logit_bias` values must be between -100 and 100, got {v}"),
            ));
        }
        out.insert(id, *v);
    }
    Ok(out)
}

/// OpenAI's and SiliconFlow's `reasoning_effort`, as a thinking budget for a reasoning
/// model: `none` turns thinking off (like `enable_thinking: false`), the others cap the
/// thought. An explicit `thinking_budget` or `enable_thinking` wins over it.
fn effort_budget(effort: &str) -> Result<Option<usize>, HttpError> {
    Ok(Some(match effort {
        "none" => return Ok(None),
        "minimal" => 256,
        "low" => 1024,
        "medium" => 4096,
        "high" => 16384,
        other => {
            return Err(bad(
                "reasoning_effort",
                format!(
                    "`reasoning_effort` must be one of none, minimal, low, medium, high; got `{other}`"
                ),
            ));
        }
    }))
}

/// How a request thinks: the chat template's variables (with `enable_thinking` where the
/// request or its `reasoning_effort` set it) and the request's own thinking budget, checked
/// against how the model thinks (`reasoning`, `None` for a model that does not) and its
/// context window.
fn thinking(
    req: &ChatCompletionRequest,
    model_id: &str,
    reasoning: Option<&ReasoningSpec>,
    context_length: usize,
) -> Result<(Map<String, Value>, Option<usize>), HttpError> {
    let mut kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    if let Some(t) = req.enable_thinking {
        kwargs.insert("enable_thinking".into(), Value::Bool(t));
    }
    let effort = match req.reasoning_effort.as_deref() {
        None => None,
        Some(_) if reasoning.is_none() => {
            return Err(bad(
                "reasoning_effort",
                format!(
                    "model `{model_id}` does not reason: send the request without `reasoning_effort`"
                ),
            ));
        }
        Some(e) => Some(effort_budget(e)?),
    };
    if effort == Some(None) && !kwargs.contains_key("enable_thinking") {
        kwargs.insert("enable_thinking".into(), Value::Bool(false));
    }
    let thinking_off = match kwargs.get("enable_thinking") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => !b,
        Some(other) => {
            return Err(bad(
                "chat_template_kwargs.enable_thinking",
                format!("`enable_thinking` must be a boolean, got {other}"),
            ));
        }
    };
    if thinking_off && reasoning.is_some_and(|r| !r.switchable) {
        let param = if req.enable_thinking.is_some() {
            "enable_thinking"
        } else if req
            .chat_template_kwargs
            .as_ref()
            .is_some_and(|k| k.contains_key("enable_thinking"))
        {
            "chat_template_kwargs.enable_thinking"
        } else {
            "reasoning_effort"
        };
        return Err(bad(
            param,
            format!(
                "model `{model_id}` always thinks: its chat template has no `enable_thinking` switch"
            ),
        ));
    }
    // The engine closes a spent thought by appending the end tag, which counts against the
    // budget: a budget the tag alone would overrun cannot be kept.
    let least = reasoning.map_or(1, ReasoningSpec::min_budget);
    let budget = match req.thinking_budget {
        Some(b) if b < least as i64 || b as usize >= context_length => {
            let why = match reasoning {
                Some(r) if b >= 1 && b < least as i64 => format!(
                    ": the tag that closes a thought takes {} of model `{model_id}`'s tokens",
                    r.close_tokens.len()
                ),
                _ => String::new(),
            };
            return Err(bad(
                "thinking_budget",
                format!(
                    "`thinking_budget` must be between {least} and {}, got {b}{why}",
                    context_length - 1
                ),
            ));
        }
        Some(b) => Some(b as usize),
        // An effort's budget is held to the context window, which no thought outgrows.
        None => effort
            .flatten()
            .map(|b| b.min(context_length.saturating_sub(1).max(1))),
    };
    Ok((kwargs, budget))
}

/// The tokens each choice may generate: what the request asked (`asked`), held to the
/// operator's ceiling (`cap`: a request for more is served up to it, with
/// `finish_reason: "length"`), and then to what fits the context window beside the prompt,
/// which the 400 calls by its field (`input`: `messages` or `prompt`).
pub(crate) fn max_tokens(
    input: &str,
    prompt: usize,
    context_length: usize,
    asked: Option<(&'static str, i64)>,
    cap: Option<usize>,
) -> Result<usize, HttpError> {
    let ctx = context_length;
    let (takes, shorten) = match input {
        "messages" => ("the messages take", "the conversation"),
        _ => ("the prompt takes", "the prompt"),
    };
    if prompt >= ctx {
        return Err(HttpError::context_exceeded(
            input,
            format!(
                "This model's maximum context length is {ctx} tokens, but {takes} {prompt} tokens; shorten {shorten}"
            ),
        ));
    }
    let room = ctx - prompt;
    let cap = cap.map(|c| c.max(1) as i64);
    match asked.map(|(param, m)| (param, cap.map_or(m, |c| m.min(c)))) {
        None => Ok(cap.map_or(room, |c| (c as usize).min(room))),
        Some((param, m)) if m < 1 => {
            Err(bad(param, format!("`{param}` must be at least 1, got {m}")))
        }
        Some((param, m)) if m as usize > room => Err(HttpError::context_exceeded(
            param,
            format!(
                "This model's maximum context length is {ctx} tokens; {takes} {prompt} and `{param}` asks for {m}, {} too many",
                m as usize - room
            ),
        )),
        Some((_, m)) => Ok(m as usize),
    }
}

/// Validates the request body `body` for the local model `model` (served as `model_id`)
/// and the server's limits, renders and tokenizes its conversation, and builds the
/// engine jobs.
pub fn build(
    body: Value,
    model_id: &str,
    model: Arc<ServedModel>,
    limits: &Limits,
) -> Result<ChatJob, HttpError> {
    refuse_unhonoured(&body)?;
    let structured = structured::constraint(&body, &model.engine)?;
    let req: ChatCompletionRequest = typed(body)?;
    let tools = tools::asked(&req)?;
    if tools.is_some() && structured.is_some() {
        return Err(bad(
            "tools",
            "tools cannot be combined with a structured-output constraint (`response_format` and the like) yet; send one of them",
        ));
    }
    let messages = req
        .messages
        .as_ref()
        .ok_or_else(|| bad("messages", "`messages` is required"))?;
    if messages.is_empty() {
        return Err(bad(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    let mut asked = asked(&req, limits)?;
    asked.sampling.logit_bias = logit_bias(req.logit_bias.as_ref(), model.tokenizer.vocab_size())?;
    let engine = &model.engine;
    let context_length = engine.context_length();

    // Render the conversation with the model's own template.
    let template = model.template.as_ref().ok_or_else(|| {
        bad("messages", format!("model `{model_id}` has no chat template; configure one (`chat_template` in the config file)"))
    })?;
    let (mut kwargs, thinking_budget) =
        thinking(&req, model_id, engine.reasoning(), context_length)?;
    let mut conversation = template_messages(messages)?;
    let mut constraint = structured;
    let mut offer = None;
    let mut shown = Vec::new();
    if let Some(t) = &tools {
        // The template's own tool format, or the fallback's (Hermes) in the system prompt.
        let format = if template.source().contains("tools") {
            kwargs.insert("tools".into(), Value::Array(t.list.clone()));
            ToolFormat::detect(template.source())
        } else {
            add_system_text(&mut conversation, &t.system_prompt());
            ToolFormat::Hermes
        };
        shown = format
            .markers()
            .iter()
            .filter_map(|m| model.tokenizer.token(m))
            .collect();
        if let Some(g) = t.grammar(format, model.tokenizer.as_ref()) {
            let c = engine
                .constraint(&g)
                .map_err(|e| bad("tools", format!("the tools' schemas cannot be used: {e}")))?;
            constraint = Some(c);
        }
        offer = Some(t.offer(format));
    }
    let text = template
        .render(&conversation, true, &kwargs)
        .map_err(|e| bad("messages", e.to_string()))?;
    let prompt = encode_prompt(&model.tokenizer, &text);
    let max_tokens = max_tokens(
        "messages",
        prompt.len(),
        context_length,
        asked.max_tokens,
        limits.max_output_tokens,
    )?;

    let choices = asked.choices(0, asked.n, |_| GenerateRequest {
        prompt: prompt.clone(),
        sampling: asked.sampling.clone(),
        fallback_seed: 0,
        max_tokens,
        stop: asked.stop.clone(),
        logprobs: asked.logprobs.then_some(asked.top_logprobs),
        logprobs_of: Vec::new(),
        prompt_logprobs: None,
        thinking_budget,
        split_thought: true,
        constraint: constraint.clone(),
        shown: shown.clone(),
        priority: Default::default(),
    });
    Ok(Job {
        prompt_tokens: prompt.len(),
        prompts: vec![prompt.len()],
        model_id: model_id.to_owned(),
        model,
        stream: req.stream.unwrap_or(false),
        include_usage: include_usage(req.stream_options.as_ref()),
        logprobs: asked.logprobs,
        choices,
        tool_calls: offer,
    })
}

/// Adds `text` to the conversation's system message (a new first message if it has none).
fn add_system_text(conversation: &mut Vec<TemplateMessage>, text: &str) {
    match conversation.first_mut() {
        Some(m) if m.role == "system" => {
            m.content.push_str("\n\n");
            m.content.push_str(text);
        }
        _ => conversation.insert(
            0,
            TemplateMessage {
                role: "system".into(),
                content: text.to_owned(),
                extra: Map::new(),
            },
        ),
    }
}

/// `stream_options.include_usage`, off unless asked.
pub(crate) fn include_usage(options: Option<&StreamOptions>) -> bool {
    options.and_then(|o| o.include_usage).unwrap_or(false)
}

impl Asked {
    /// `count` engine requests made by `make`, each given its seed: choice `first + i` of
    /// a seeded request is reproducible and differs from every other choice, and an
    /// unseeded one gets a fresh seed.
    pub(crate) fn choices(
        &self,
        first: u64,
        count: u64,
        make: impl Fn(u64) -> GenerateRequest,
    ) -> Vec<GenerateRequest> {
        (first..first + count)
            .map(|i| {
                let mut r = make(i);
                r.sampling.seed = self.seed.map(|s| s.wrapping_add(i));
                r.fallback_seed = fresh_seed();
                r
            })
            .collect()
    }
}

/// Tokenizes a rendered prompt with special tokens parsed. Templates that print the BOS
/// token themselves must not get a second one from the tokenizer's BOS rule.
pub(crate) fn encode_prompt(tokenizer: &Tokenizer, text: &str) -> Vec<u32> {
    let mut ids = tokenizer.encode(text, true, true);
    if let Some(bos) = tokenizer.bos_id()
        && ids.len() >= 2
        && ids[0] == bos
        && ids[1] == bos
    {
        ids.remove(0);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    /// The field a 400 names.
    fn param(e: HttpError) -> String {
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{e:?}");
        e.body.param.unwrap_or_default()
    }

    fn asked_err(v: Value) -> String {
        param(asked(&req(v), &Limits::default()).unwrap_err())
    }

    fn spec(switchable: bool) -> ReasoningSpec {
        ReasoningSpec {
            tags: Default::default(),
            switchable,
            close_tokens: vec![1, 2],
            open_tokens: vec![3],
            budget: 4096,
        }
    }

    #[test]
    fn fields_that_constrain_the_output_are_refused_by_name() {
        for (field, _) in UNHONOURED {
            let body = json!({ "model": "m", "messages": [], *field: {"type": "object"} });
            assert_eq!(param(refuse_unhonoured(&body).unwrap_err()), *field);
        }
        let body = json!({"model": "m", "functions": null, "unknown_field": 1});
        assert!(refuse_unhonoured(&body).is_ok());
        let text_only = json!({"model": "m", "modalities": ["text"]});
        assert!(refuse_unhonoured(&text_only).is_ok());
        for modalities in [json!(["text", "audio"]), json!("text")] {
            let body = json!({"model": "m", "modalities": modalities});
            assert_eq!(param(refuse_unhonoured(&body).unwrap_err()), "modalities");
        }
    }

    #[test]
    fn every_sampling_field_is_range_checked() {
        for (field, value) in [
            ("temperature", json!(2.5)),
            ("top_p", json!(0.0)),
            ("top_p", json!(1.5)),
            ("min_p", json!(-0.1)),
            ("frequency_penalty", json!(3)),
            ("presence_penalty", json!(-3)),
            ("repetition_penalty", json!(0)),
            ("top_k", json!(-2)),
            ("n", json!(0)),
            ("n", json!(9)),
            ("stop", json!(["a", "b", "c", "d", "e"])),
            ("top_logprobs", json!(21)),
        ] {
            let mut body = json!({ field: value });
            if field == "top_logprobs" {
                body["logprobs"] = json!(true);
            }
            assert_eq!(asked_err(body), field, "{field} = {value}");
        }
        assert_eq!(asked_err(json!({"top_logprobs": 2})), "top_logprobs");
        let ok = asked(
            &req(
                json!({"top_k": -1, "n": 2, "stop": "x", "logprobs": true, "top_logprobs": 3,
                "seed": 7, "max_tokens": 9, "max_completion_tokens": 5,
                "response_format": {"type": "text"}, "tools": [], "tool_choice": "auto"}),
            ),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            (ok.sampling.top_k, ok.n, ok.seed, ok.stop, ok.top_logprobs),
            (0, 2, Some(7), vec!["x".to_string()], 3)
        );
        // `max_completion_tokens` is OpenAI's newer name and wins.
        assert_eq!(ok.max_tokens, Some(("max_completion_tokens", 5)));
    }

    #[test]
    fn max_tokens_fit_the_context_and_the_operators_ceiling() {
        let exceeded = |e: HttpError| {
            assert_eq!(e.body.code.as_deref(), Some("context_length_exceeded"));
            e.body.param.unwrap()
        };
        assert_eq!(
            exceeded(max_tokens("messages", 100, 100, None, None).unwrap_err()),
            "messages"
        );
        assert_eq!(
            exceeded(max_tokens("messages", 90, 100, Some(("max_tokens", 11)), None).unwrap_err()),
            "max_tokens"
        );
        assert_eq!(
            max_tokens("messages", 90, 100, Some(("max_tokens", 10)), None).unwrap(),
            10
        );
        assert_eq!(max_tokens("messages", 90, 100, None, None).unwrap(), 10);
        // The ceiling applies before the context check: asking for more is served up to it.
        assert_eq!(
            max_tokens("messages", 90, 100, Some(("max_tokens", 50)), Some(4)).unwrap(),
            4
        );
        assert_eq!(max_tokens("messages", 90, 100, None, Some(4)).unwrap(), 4);
        assert_eq!(max_tokens("messages", 98, 100, None, Some(4)).unwrap(), 2);
        assert_eq!(
            param(
                max_tokens("messages", 1, 100, Some(("max_completion_tokens", 0)), None)
                    .unwrap_err()
            ),
            "max_completion_tokens"
        );
    }

    #[test]
    fn thinking_switches_budgets_and_reasoning_effort() {
        let think = |v: Value, r: Option<&ReasoningSpec>| thinking(&req(v), "m", r, 1000);
        let (always, switchable) = (spec(false), spec(true));
        // A budget is checked against the context window, for every model.
        assert_eq!(
            param(think(json!({"thinking_budget": 0}), None).unwrap_err()),
            "thinking_budget"
        );
        assert_eq!(
            param(think(json!({"thinking_budget": 1000}), Some(&always)).unwrap_err()),
            "thinking_budget"
        );
        let (_, b) = think(json!({"thinking_budget": 999}), Some(&always)).unwrap();
        assert_eq!(b, Some(999));
        // The closing tag (two tokens here) counts against the budget: less than a token
        // of thought and the tag cannot be kept.
        let e = think(json!({"thinking_budget": 2}), Some(&always)).unwrap_err();
        assert!(e.body.message.contains("between 3 and 999"), "{e:?}");
        assert_eq!(param(e), "thinking_budget");
        let (_, b) = think(json!({"thinking_budget": 3}), Some(&always)).unwrap();
        assert_eq!(b, Some(3));
        let (_, b) = think(json!({"thinking_budget": 2}), None).unwrap();
        assert_eq!(b, Some(2));
        // Off: a 400 for a model that always thinks, named after the field that asked.
        for (body, field) in [
            (json!({"enable_thinking": false}), "enable_thinking"),
            (
                json!({"chat_template_kwargs": {"enable_thinking": false}}),
                "chat_template_kwargs.enable_thinking",
            ),
            (json!({"reasoning_effort": "none"}), "reasoning_effort"),
        ] {
            assert_eq!(param(think(body, Some(&always)).unwrap_err()), field);
        }
        let (kwargs, b) = think(json!({"reasoning_effort": "none"}), Some(&switchable)).unwrap();
        assert_eq!((kwargs["enable_thinking"].clone(), b), (json!(false), None));
        let (kwargs, _) = think(json!({"enable_thinking": true}), Some(&switchable)).unwrap();
        assert_eq!(kwargs["enable_thinking"], json!(true));
        assert_eq!(
            param(
                think(
                    json!({"chat_template_kwargs": {"enable_thinking": "no"}}),
                    None
                )
                .unwrap_err()
            ),
            "chat_template_kwargs.enable_thinking"
        );
        // Efforts are budgets, held to the context; an explicit budget or switch wins.
        assert_eq!(
            think(json!({"reasoning_effort": "minimal"}), Some(&always))
                .unwrap()
                .1,
            Some(256)
        );
        assert_eq!(
            think(json!({"reasoning_effort": "high"}), Some(&always))
                .unwrap()
                .1,
            Some(999)
        );
        let both = json!({"reasoning_effort": "low", "thinking_budget": 77});
        assert_eq!(think(both, Some(&always)).unwrap().1, Some(77));
        let both = json!({"reasoning_effort": "none", "enable_thinking": true});
        assert_eq!(
            think(both, Some(&switchable)).unwrap().0["enable_thinking"],
            json!(true)
        );
        assert_eq!(
            param(think(json!({"reasoning_effort": "extreme"}), Some(&always)).unwrap_err()),
            "reasoning_effort"
        );
        // A model that does not think cannot honour an effort.
        assert_eq!(
            param(think(json!({"reasoning_effort": "low"}), None).unwrap_err()),
            "reasoning_effort"
        );
        assert_eq!(think(json!({}), Some(&always)).unwrap().1, None);
    }

    #[test]
    fn messages_become_template_inputs() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": null, "reasoning": "hm",
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"}
        ]))
        .unwrap();
        let t = template_messages(&msgs).unwrap();
        let roles: Vec<&str> = t.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool"]);
        assert_eq!((t[1].content.as_str(), t[2].content.as_str()), ("ab", ""));
        assert_eq!(t[2].extra["reasoning_content"], json!("hm"));
        assert_eq!(t[2].extra["tool_calls"][0]["id"], json!("c1"));
        assert_eq!(
            (
                t[3].extra["tool_call_id"].clone(),
                t[3].extra["name"].clone()
            ),
            (json!("c1"), json!("f"))
        );
        let bad_part: Vec<ChatMessage> = serde_json::from_value(json!([
            {"role": "user", "content": [{"type": "image_url"}]}
        ]))
        .unwrap();
        assert_eq!(
            param(template_messages(&bad_part).unwrap_err()),
            "messages[0].content"
        );
        let no_content: Vec<ChatMessage> =
            serde_json::from_value(json!([{"role": "user"}])).unwrap();
        assert_eq!(
            param(template_messages(&no_content).unwrap_err()),
            "messages[0].content"
        );
    }

    /// The families' real templates, given an earlier call and its result: the format
    /// read from each template is the one it writes the call in (the call, parsed back
    /// from the rendered assistant turn, is the call sent), and the result reaches the
    /// prompt.
    #[test]
    fn earlier_calls_round_trip_through_each_family_s_template() {
        use tokenfab_engine::template::ChatTemplate;
        use tokenfab_text::tools::{Call, Piece, Tool, parse_complete};
        let dir = tokenfab_testkit::test_assets_dir().join("templates");
        let weather = json!({"type": "function", "function": {"name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}});
        let user = json!({"role": "user", "content": "What is the weather in Paris?"});
        // Nine alphanumerics: Mistral's templates refuse other ids.
        let assistant = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "abc123xyz", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]});
        let result =
            json!({"role": "tool", "tool_call_id": "abc123xyz", "content": "{\"temp_c\": 21}"});
        let kwargs: Map<String, Value> = [("tools".to_owned(), json!([weather]))]
            .into_iter()
            .collect();
        let tools = [Tool {
            name: "get_weather".into(),
            string_params: vec!["city".into()],
        }];
        for (file, format) in [
            ("meta-llama-Llama-3.1-8B-Instruct.jinja", ToolFormat::Llama3),
            ("meta-llama-Llama-3.2-3B-Instruct.jinja", ToolFormat::Llama3),
            (
                "meta-llama-Llama-3.3-70B-Instruct.jinja",
                ToolFormat::Llama3,
            ),
            (
                "mistralai-Mistral-Nemo-Instruct-2407.jinja",
                ToolFormat::Mistral,
            ),
            (
                "unsloth-mistral-Devstral-Small-2507.jinja",
                ToolFormat::MistralArgs,
            ),
            (
                "Mistral-Small-3.2-24B-Instruct-2506.jinja",
                ToolFormat::MistralArgs,
            ),
            ("Qwen-Qwen2.5-7B-Instruct.jinja", ToolFormat::Hermes),
            ("Qwen-Qwen3-0.6B.jinja", ToolFormat::Hermes),
            (
                "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
                ToolFormat::Hermes,
            ),
            ("Qwen3-Coder.jinja", ToolFormat::QwenXml),
            ("Qwen3.5-4B.jinja", ToolFormat::QwenXml),
        ] {
            let source = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{file}: {e}: run scripts/fetch-test-assets.sh"));
            assert_eq!(ToolFormat::detect(&source), format, "{file}");
            let template = ChatTemplate::new(&source, "<s>", "</s>").unwrap();
            let render = |msgs: &[&Value], generate: bool| {
                let msgs: Vec<ChatMessage> = msgs
                    .iter()
                    .map(|m| serde_json::from_value((*m).clone()).unwrap())
                    .collect();
                template
                    .render(&template_messages(&msgs).unwrap(), generate, &kwargs)
                    .unwrap_or_else(|e| panic!("{file}: {e}"))
            };
            let whole = render(&[&user, &assistant, &result], true);
            assert!(
                whole.contains("21") && whole.contains("get_weather"),
                "{file}: {whole}"
            );
            let before = render(&[&user], true);
            let with_call = render(&[&user, &assistant], false);
            let turn = with_call
                .strip_prefix(before.as_str())
                .unwrap_or_else(|| panic!("{file}: the call's turn does not follow the prompt:\n{before}\n---\n{with_call}"));
            let mut turn = turn.trim_end();
            for end in ["<|eot_id|>", "<|eom_id|>", "</s>", "<|im_end|>"] {
                turn = turn.strip_suffix(end).unwrap_or(turn).trim_end();
            }
            let pieces = parse_complete(turn, format, &tools);
            let calls: Vec<&Call> = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Call(c) => Some(c),
                    Piece::Text(_) => None,
                })
                .collect();
            let want = Call {
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            };
            assert_eq!(calls, [&want], "{file}: {turn:?}");
        }
    }
}
