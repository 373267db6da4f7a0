//! What only a completion request has: its prompts (text, token ids, a batch of either,
//! or fill-in-the-middle parts around `suffix`), `echo`, the legacy integer `logprobs`,
//! `best_of`, and OpenAI's default of 16 tokens. The sampling, stop and length steps and
//! the job are chat's ([`super::sampled`], [`super::max_tokens`], [`Job`]).

use std::sync::Arc;

use serde_json::Value;
use tokenfab_engine::scheduler::GenerateRequest;
use tokenfab_engine::tokenizer::Tokenizer;
use tokenfab_wire::completions::{CompletionRequest, PromptInput};

use super::{
    Asked, Job, Knobs, bad, encode_prompt, include_usage, logit_bias, max_tokens, sampled,
};
use crate::error::HttpError;
use crate::routes::typed;
use crate::state::{Limits, ServedModel};

/// Most alternatives per token in the legacy `logprobs` (OpenAI's limit).
pub const MAX_LOGPROBS: i64 = 5;
/// Most prompts in one request's batch.
pub const MAX_PROMPTS: usize = 64;
/// Tokens generated per choice when `max_tokens` is absent (OpenAI's default).
pub const DEFAULT_MAX_TOKENS: usize = 16;

/// A validated completion request.
pub struct CompletionJob {
    /// `best_of` engine jobs per prompt.
    pub job: Job,
    /// Choices returned per prompt: the `n` most likely of the `best_of` generated.
    pub n: usize,
    pub best_of: usize,
    /// The legacy `logprobs`: `Some(k)` returns each token's logprob and `k` alternatives.
    pub logprobs: Option<usize>,
    /// Per prompt, when `echo`: the text put in front of each of its choices, and its
    /// tokens (whose logprobs come with `logprobs`).
    pub echo: Option<Vec<Echo>>,
}

/// An echoed prompt.
pub struct Echo {
    pub text: String,
    pub tokens: Vec<u32>,
}

/// One prompt, tokenized, with the text `echo` shows for it.
fn prompt_tokens(
    i: usize,
    input: PromptInput,
    suffix: Option<&str>,
    tokenizer: &Tokenizer,
    model_id: &str,
) -> Result<(String, Vec<u32>), HttpError> {
    let param = format!("prompt[{i}]");
    match input {
        PromptInput::Tokens(t) if t.is_empty() => {
            Err(bad(&param, format!("`{param}` has no tokens")))
        }
        PromptInput::Tokens(_) if suffix.is_some() => Err(bad(
            "suffix",
            "`suffix` needs a text prompt: the fill-in-the-middle prompt is built from text",
        )),
        PromptInput::Tokens(t) => match t.iter().find(|&&id| id as usize >= tokenizer.vocab_size())
        {
            Some(id) => Err(bad(
                &param,
                format!("`{param}` holds token id {id}, which is not a token of this model"),
            )),
            None => Ok((tokenizer.decode(&t, false), t)),
        },
        PromptInput::Text(text) => {
            let Some(suffix) = suffix else {
                let ids = encode_prompt(tokenizer, &text);
                if ids.is_empty() {
                    // The engine has nothing to continue from (found by the request fuzz
                    // target: it used to reach the engine and fail there).
                    return Err(bad(
                        &param,
                        format!(
                            "`{param}` is empty, and model `{model_id}` adds no beginning-of-text token: send some text"
                        ),
                    ));
                }
                return Ok((text, ids));
            };
            let fim = tokenizer.fim().ok_or_else(|| {
                bad(
                    "suffix",
                    format!(
                        "model `{model_id}` has no fill-in-the-middle tokens, so it cannot complete between a prompt and a `suffix`; send the request without `suffix`"
                    ),
                )
            })?;
            let marker = |id| tokenizer.token_text(id).unwrap_or_default();
            let fill = format!(
                "{}{text}{}{suffix}{}",
                marker(fim.prefix),
                marker(fim.suffix),
                marker(fim.middle)
            );
            Ok((text, encode_prompt(tokenizer, &fill)))
        }
    }
}

/// What a completion request asks for, checked without the model.
#[derive(Debug)]
struct Options {
    inputs: Vec<PromptInput>,
    asked: Asked,
    stream: bool,
    echo: bool,
    logprobs: Option<usize>,
    best_of: u64,
}

/// Validates every field of `req` that needs no model.
fn options(req: &CompletionRequest, limits: &Limits) -> Result<Options, HttpError> {
    let inputs = req
        .prompt
        .clone()
        .ok_or_else(|| bad("prompt", "`prompt` is required"))?
        .into_inputs();
    if inputs.is_empty() || inputs.len() > MAX_PROMPTS {
        return Err(bad(
            "prompt",
            format!(
                "`prompt` must hold between 1 and {MAX_PROMPTS} prompts, got {}",
                inputs.len()
            ),
        ));
    }
    let (stream, echo) = (req.stream.unwrap_or(false), req.echo.unwrap_or(false));
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
        // Scoring a prompt (`echo` with `max_tokens: 0`) generates nothing; the shared
        // check would refuse the 0.
        max_tokens: req
            .max_tokens
            .filter(|&m| !(m == 0 && echo))
            .map(|m| ("max_tokens", m)),
    };
    let asked = sampled(&knobs, limits)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(bad(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_LOGPROBS}, got {k}"),
            ));
        }
    };
    let n = asked.n;
    let best_of = req.best_of.unwrap_or(n as i64);
    if best_of < n as i64 || best_of as usize > limits.max_n {
        return Err(bad(
            "best_of",
            format!(
                "`best_of` must be at least `n` ({n}) and at most {}, got {best_of}",
                limits.max_n
            ),
        ));
    }
    let best_of = best_of as u64;
    if stream && best_of > n {
        return Err(bad(
            "best_of",
            "`best_of` greater than `n` cannot be streamed: the best choices are known only at the end",
        ));
    }
    if echo && req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(bad("suffix", "`echo` cannot be combined with `suffix`"));
    }
    Ok(Options {
        inputs,
        asked,
        stream,
        echo,
        logprobs,
        best_of,
    })
}

/// Validates the completion request `body` for the local model `model` (served as
/// `model_id`) and the server's limits, tokenizes its prompts and builds the engine jobs.
pub fn build(
    body: Value,
    model_id: &str,
    model: Arc<ServedModel>,
    limits: &Limits,
) -> Result<CompletionJob, HttpError> {
    super::refuse_unhonoured(&body)?;
    let constraint = super::structured::constraint(&body, &model.engine)?;
    let req: CompletionRequest = typed(body)?;
    let Options {
        inputs,
        mut asked,
        stream,
        echo,
        logprobs,
        best_of,
    } = options(&req, limits)?;
    asked.sampling.logit_bias = logit_bias(req.logit_bias.as_ref(), model.tokenizer.vocab_size())?;
    let n = asked.n;
    let suffix = req.suffix.as_deref().filter(|s| !s.is_empty());
    let (tokenizer, context_length) = (&model.tokenizer, model.engine.context_length());
    let mut echoes = Vec::new();
    let mut prompts = Vec::new();
    let mut choices = Vec::new();
    for (i, input) in inputs.into_iter().enumerate() {
        let (text, ids) = prompt_tokens(i, input, suffix, tokenizer, model_id)?;
        // Absent, or 0 with `echo`, asks for nothing here: the room beside the prompt.
        let room = max_tokens(
            "prompt",
            ids.len(),
            context_length,
            asked.max_tokens,
            limits.max_output_tokens,
        )?;
        let max_tokens = match req.max_tokens {
            Some(0) if echo => 0,
            None => room.min(DEFAULT_MAX_TOKENS),
            Some(_) => room,
        };
        let first = i as u64 * best_of;
        choices.extend(asked.choices(first, best_of, |_| GenerateRequest {
            prompt: ids.clone(),
            sampling: asked.sampling.clone(),
            fallback_seed: 0,
            max_tokens,
            stop: asked.stop.clone(),
            // Ranking `best_of` candidates needs every token's logprob.
            logprobs: logprobs.or((best_of > n).then_some(0)),
            logprobs_of: Vec::new(),
            prompt_logprobs: logprobs.filter(|_| echo),
            thinking_budget: None,
            // A completion's text is everything the model wrote.
            split_thought: false,
            shown: Vec::new(),
            priority: Default::default(),
            constraint: constraint.clone(),
        }));
        prompts.push(ids.len());
        echoes.push(Echo { text, tokens: ids });
    }
    Ok(CompletionJob {
        job: Job {
            model_id: model_id.to_owned(),
            model,
            stream,
            include_usage: include_usage(req.stream_options.as_ref()),
            logprobs: logprobs.is_some(),
            prompt_tokens: prompts.iter().sum(),
            prompts,
            choices,
            tool_calls: None,
        },
        n: n as usize,
        best_of: best_of as usize,
        logprobs,
        echo: echo.then_some(echoes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options_of(v: Value) -> Result<Options, HttpError> {
        options(&typed(v)?, &Limits::default())
    }

    /// The field a 400 names.
    fn refused(v: Value) -> String {
        let e = options_of(v).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{e:?}");
        e.body.param.unwrap_or_default()
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, field) in [
            (json!({}), "prompt"),
            (json!({"prompt": []}), "prompt"),
            (json!({"prompt": [1, "a"]}), "prompt"),
            (json!({"prompt": vec!["a"; MAX_PROMPTS + 1]}), "prompt"),
            (json!({"prompt": "a", "logprobs": 6}), "logprobs"),
            (json!({"prompt": "a", "logprobs": -1}), "logprobs"),
            (json!({"prompt": "a", "n": 3, "best_of": 2}), "best_of"),
            (json!({"prompt": "a", "best_of": 9}), "best_of"),
            (
                json!({"prompt": "a", "best_of": 2, "stream": true}),
                "best_of",
            ),
            (
                json!({"prompt": "a", "echo": true, "suffix": "b"}),
                "suffix",
            ),
            (json!({"prompt": "a", "top_p": 0}), "top_p"),
            (
                json!({"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}),
                "stop",
            ),
            (json!({"prompt": "a", "echo": "yes"}), "echo"),
        ] {
            assert_eq!(refused(body.clone()), field, "{body}");
        }
    }

    #[test]
    fn defaults_and_what_is_accepted() {
        let o = options_of(
            json!({"prompt": ["a", "b"], "n": 2, "best_of": 3, "logprobs": 0,
            "echo": true, "max_tokens": 0, "stop": "x", "seed": 4}),
        )
        .unwrap();
        assert_eq!(o.inputs.len(), 2);
        assert_eq!(
            (o.asked.n, o.best_of, o.logprobs, o.echo),
            (2, 3, Some(0), true)
        );
        // `max_tokens: 0` with `echo` scores the prompt: no length asked of the shared step.
        assert_eq!(o.asked.max_tokens, None);
        assert_eq!(
            (o.asked.stop, o.asked.seed),
            (vec!["x".to_string()], Some(4))
        );
        let o = options_of(json!({"prompt": [[1, 2], [3]], "stream": true, "n": 2})).unwrap();
        assert_eq!((o.best_of, o.logprobs, o.stream), (2, None, true));
    }
}
