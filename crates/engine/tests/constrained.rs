//! Constrained decoding on a real model (SmolLM2): sampled at temperature 1 over many
//! seeds, every answer is valid for its JSON schema, regex or choice list, and ends on its
//! own (the grammar's end allows only the end-of-generation token); a reasoning model's
//! thought stays free text and only the answer is constrained; grammars llguidance cannot
//! use are refused with a reason before anything runs.

mod common;

use serde_json::{Value, json};
use tokenfab_engine::constraint::Grammar;
use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::sampler::SamplingParams;
use tokenfab_engine::scheduler::{
    self, EngineHandle, Event, FinishReason, GenerateRequest, SchedulerConfig,
};
use tokenfab_engine::template::TemplateMessage;

fn msg(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage {
        role: role.into(),
        content: content.into(),
        extra: Default::default(),
    }
}

fn load(reasoning: bool) -> (LoadedModel, EngineHandle) {
    let mut loaded =
        LoadedModel::load(&common::smollm_path(), None, Some(2048)).unwrap_or_else(|e| {
            panic!("{e}: fetch the model with `cargo run --release -- models fetch`")
        });
    if reasoning {
        loaded.set_reasoning(Some(true), None, None);
    }
    let engine = scheduler::start(
        loaded.model.clone(),
        loaded.tokenizer.clone(),
        loaded.reasoning.clone(),
        SchedulerConfig {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    (loaded, engine)
}

/// Runs `prompt` under `grammar` with `seed`; returns (thought, answer, finish reason).
fn run(
    engine: &EngineHandle,
    prompt: Vec<u32>,
    grammar: &Grammar,
    seed: u64,
    max_tokens: usize,
) -> (String, String, FinishReason) {
    let constraint = engine.constraint(grammar).unwrap();
    let req = GenerateRequest {
        prompt,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        },
        fallback_seed: 0,
        max_tokens,
        stop: vec![],
        logprobs: None,
        logprobs_of: Vec::new(),
        prompt_logprobs: None,
        thinking_budget: Some(48),
        split_thought: true,
        shown: Vec::new(),
        priority: Default::default(),
        constraint: Some(constraint),
    };
    let mut rx = engine.submit(req).unwrap();
    let (mut thought, mut answer) = (String::new(), String::new());
    loop {
        match rx.blocking_recv().expect("events end with Finished") {
            Event::Token { text, .. } | Event::Text(text) => {
                thought.push_str(&text.reasoning);
                answer.push_str(&text.content);
            }
            Event::Finished { reason, .. } => return (thought, answer, reason),
            Event::Failed(e) => panic!("{e}"),
            Event::Prompt(_) => unreachable!(),
        }
    }
}

fn chat(loaded: &LoadedModel, conversation: &[TemplateMessage]) -> Vec<u32> {
    let text = loaded
        .template
        .as_ref()
        .unwrap()
        .render(conversation, true, &Default::default())
        .unwrap();
    loaded.tokenizer.encode(&text, true, true)
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "languages": {"type": "array", "items": {"enum": ["en", "fr", "zh"]}, "maxItems": 3}
        },
        "required": ["name", "age"],
        "additionalProperties": false
    })
}

/// What `person_schema` demands, checked by hand.
fn check_person(answer: &str) {
    let v: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {answer}"));
    assert!(
        o.keys()
            .all(|k| ["name", "age", "languages"].contains(&k.as_str())),
        "{answer}"
    );
    assert!(
        o["name"].as_str().is_some_and(|n| n.chars().count() <= 24),
        "{answer}"
    );
    assert!(o["age"].as_u64().is_some_and(|a| a <= 150), "{answer}");
    if let Some(l) = o.get("languages") {
        let l = l.as_array().unwrap();
        assert!(l.len() <= 3);
        assert!(
            l.iter()
                .all(|x| ["en", "fr", "zh"].contains(&x.as_str().unwrap()))
        );
    }
}

#[test]
fn answers_follow_their_grammar() {
    let (loaded, engine) = load(false);
    let ask = |q: &str| chat(&loaded, &[msg("user", q)]);
    let schema = Grammar::JsonSchema(person_schema());
    for seed in 0..6 {
        let (thought, answer, reason) = run(
            &engine,
            ask("Describe a famous scientist."),
            &schema,
            seed,
            120,
        );
        assert!(thought.is_empty());
        assert_eq!(reason, FinishReason::Stop, "{answer:?}");
        check_person(&answer);
    }
    let phone = Grammar::Regex(r"\+1 [0-9]{3}-[0-9]{4}".into());
    for seed in 0..3 {
        let (_, answer, reason) = run(&engine, ask("Make up a phone number."), &phone, seed, 32);
        assert_eq!(reason, FinishReason::Stop);
        let b = answer.as_bytes();
        assert!(
            answer.len() == 11 && answer.starts_with("+1 ") && b[6] == b'-',
            "{answer:?}"
        );
        assert!(
            answer[3..]
                .chars()
                .filter(|c| *c != '-')
                .all(|c| c.is_ascii_digit())
        );
    }
    let choice = Grammar::Choice(vec!["yes".into(), "no".into(), "maybe (later)".into()]);
    for seed in 0..3 {
        let (_, answer, _) = run(&engine, ask("Is the sky green?"), &choice, seed, 16);
        assert!(
            ["yes", "no", "maybe (later)"].contains(&answer.as_str()),
            "{answer:?}"
        );
    }
    // `json_object`: any object.
    let any = Grammar::JsonSchema(json!({"type": "object"}));
    let (_, answer, _) = run(
        &engine,
        ask("Give me a JSON object about cats."),
        &any,
        1,
        200,
    );
    // Cut by max_tokens or not, it starts as an object and never leaves JSON's syntax.
    assert!(answer.starts_with('{'), "{answer:?}");
}

#[test]
fn a_reasoning_model_thinks_freely_then_answers_in_json() {
    let (loaded, engine) = load(true);
    let example = [
        msg(
            "system",
            "Always think step by step inside <think></think> tags before answering. After </think>, give only the final answer.",
        ),
        msg("user", "What is 2 + 2?"),
        msg("assistant", "<think>\n2 + 2 = 4.\n</think>\n\n4"),
        msg("user", "Describe a famous scientist."),
    ];
    let base = chat(&loaded, &example);
    let opened = [
        base.clone(),
        loaded.tokenizer.encode("<think>\n", false, true),
    ]
    .concat();
    let schema = Grammar::JsonSchema(person_schema());
    let mut thought_seen = 0;
    for seed in 0..8 {
        let prompt = if seed % 2 == 0 {
            base.clone()
        } else {
            opened.clone()
        };
        let (thought, answer, reason) = run(&engine, prompt, &schema, seed, 160);
        eprintln!("seed {seed}: {reason:?} {thought:?} => {answer:?}");
        // The thought is free text (its budget closes it at 48 tokens): never held to the
        // schema, so it is not JSON.
        thought_seen += usize::from(!thought.is_empty());
        assert!(!thought.contains("</think>"));
        check_person(&answer);
    }
    // An opened thought is always a thought (4), and the model opens one itself under
    // the constraint: `<think>` is several tokens in SmolLM2's vocabulary, allowed first.
    assert!(thought_seen >= 6, "{thought_seen} thoughts");
}

#[test]
fn unusable_grammars_are_refused_with_a_reason() {
    let (_, engine) = load(false);
    let cases = [
        Grammar::Regex("(unclosed".into()),
        Grammar::JsonSchema(json!({"type": "no-such-type"})),
        Grammar::Lark("start: ???".into()),
        Grammar::Choice(vec![]),
    ];
    for g in cases {
        let e = engine
            .constraint(&g)
            .err()
            .unwrap_or_else(|| panic!("{g:?} compiled"));
        assert!(!e.is_empty(), "{g:?}");
    }
}
