//! The one place where a chat request becomes engine jobs: every field is validated (a 400
//! names the field), the conversation is rendered through the model's template, tokenized,
//! and checked against the context window.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};
use tokenfab_engine::sampler::{Rng, SamplingParams};
use tokenfab_engine::scheduler::{GenerateRequest, ThinkingPlan};
use tokenfab_engine::template::TemplateMessage;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_wire::chat::{ChatCompletionRequest, ChatMessage, MessageContent, Role};

use crate::error::HttpError;
use crate::state::{Limits, ServedModel};

/// Most stop strings per request (OpenAI's limit).
const MAX_STOP: usize = 4;
/// Most alternatives per token in `top_logprobs` (OpenAI's limit).
const MAX_TOP_LOGPROBS: i64 = 20;

/// A validated request, ready to submit.
pub struct ChatJob {
    /// The id the client used.
    pub model_id: String,
    pub model: Arc<ServedModel>,
    pub stream: bool,
    pub include_usage: bool,
    pub logprobs: bool,
    pub prompt_tokens: usize,
    /// One engine request per choice (`n`).
    pub choices: Vec<GenerateRequest>,
}

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
                extra.insert("tool_calls".into(), Value::Array(tc.clone()));
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

/// Validates `req` for the local model `model` (served as `model_id`) and the server's
/// limits, and builds the engine jobs.
pub fn build(
    req: ChatCompletionRequest,
    model_id: &str,
    model: Arc<ServedModel>,
    limits: &Limits,
) -> Result<ChatJob, HttpError> {
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
    let stop = req.stop.clone().map(|s| s.into_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP {
        return Err(bad(
            "stop",
            format!(
                "`stop` takes at most {MAX_STOP} sequences, got {}",
                stop.len()
            ),
        ));
    }
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
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(bad(
            "tools",
            "tool calling is not available for this model yet; send the request without `tools`",
        ));
    }
    if let Some(rf) = &req.response_format {
        let kind = rf.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "text" {
            return Err(bad(
                "response_format",
                format!("`response_format` of type `{kind}` is not available yet; use `text`"),
            ));
        }
    }
    let mut logit_bias = HashMap::new();
    for (k, v) in req.logit_bias.iter().flatten() {
        let id: u32 = k
            .parse()
            .ok()
            .filter(|&id: &u32| (id as usize) < model.tokenizer.vocab_size())
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
        logit_bias.insert(id, *v);
    }

    // Render the conversation with the model's own template.
    let template = model.template.as_ref().ok_or_else(|| {
        bad("messages", format!("model `{model_id}` has no chat template; configure one (`chat_template` in the config file)"))
    })?;
    let mut kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    if let Some(t) = req.enable_thinking {
        kwargs.insert("enable_thinking".into(), Value::Bool(t));
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
    if thinking_off && model.reasoning.as_ref().is_some_and(|r| !r.switchable) {
        let param = if req.enable_thinking.is_some() {
            "enable_thinking"
        } else {
            "chat_template_kwargs.enable_thinking"
        };
        return Err(bad(
            param,
            format!(
                "model `{model_id}` always thinks: its chat template has no `enable_thinking` switch"
            ),
        ));
    }
    let text = template
        .render(&template_messages(messages)?, true, &kwargs)
        .map_err(|e| bad("messages", e.to_string()))?;
    let prompt = encode_prompt(&model.tokenizer, &text);

    let ctx = model.context_length;
    if prompt.len() >= ctx {
        return Err(HttpError::context_exceeded(
            "messages",
            format!(
                "This model's maximum context length is {ctx} tokens, but the messages take {} tokens; shorten the conversation",
                prompt.len()
            ),
        ));
    }
    let (max_param, max_tokens) = match (req.max_completion_tokens, req.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let room = ctx - prompt.len();
    // The operator's ceiling applies first: a request for more is served up to the ceiling
    // (finish_reason "length"), and only what will really be generated must fit the context.
    let cap = limits.max_output_tokens.map(|c| c.max(1) as i64);
    let max_tokens = max_tokens.map(|m| cap.map_or(m, |c| m.min(c)));
    let max_tokens = match max_tokens {
        None => cap.map_or(room, |c| (c as usize).min(room)),
        Some(m) if m < 1 => {
            return Err(bad(
                max_param,
                format!("`{max_param}` must be at least 1, got {m}"),
            ));
        }
        Some(m) if m as usize > room => {
            return Err(HttpError::context_exceeded(
                max_param,
                format!(
                    "This model's maximum context length is {ctx} tokens; the messages take {} and `{max_param}` asks for {m}, {} too many",
                    prompt.len(),
                    m as usize - room
                ),
            ));
        }
        Some(m) => m as usize,
    };

    let thinking = match (&model.reasoning, req.thinking_budget) {
        (_, Some(b)) if b < 1 || b as usize >= model.context_length => {
            return Err(bad(
                "thinking_budget",
                format!(
                    "`thinking_budget` must be between 1 and {}, got {b}",
                    model.context_length - 1
                ),
            ));
        }
        (None, _) => None,
        (Some(spec), budget) => Some(ThinkingPlan {
            tags: spec.tags.clone(),
            // The template opened the thought: generation starts inside it.
            opened: text.trim_end().ends_with(spec.tags.start.as_str()),
            budget: Some(budget.map_or(model.thinking_budget, |b| b as usize)),
            close_tokens: spec.close_tokens.clone(),
        }),
    };

    let sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        top_k,
        min_p: req.min_p.unwrap_or(0.0),
        frequency_penalty: req.frequency_penalty.unwrap_or(0.0),
        presence_penalty: req.presence_penalty.unwrap_or(0.0),
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        seed: None,
        logit_bias,
    };
    let base_seed = req.seed.map(|s| s as u64);
    let choices = (0..n as u64)
        .map(|i| {
            let mut sampling = sampling.clone();
            // Choice i of a seeded request is reproducible and differs from choice j.
            sampling.seed = base_seed.map(|s| s.wrapping_add(i));
            GenerateRequest {
                prompt: prompt.clone(),
                sampling,
                fallback_seed: fresh_seed(),
                max_tokens,
                stop: stop.clone(),
                logprobs: logprobs.then_some(top_logprobs),
                thinking: thinking.clone(),
            }
        })
        .collect();
    Ok(ChatJob {
        prompt_tokens: prompt.len(),
        model_id: model_id.to_owned(),
        model,
        stream: req.stream.unwrap_or(false),
        include_usage: req
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs,
        choices,
    })
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
