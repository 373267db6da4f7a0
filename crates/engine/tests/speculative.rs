//! Speculative decoding on real weights: Qwen2.5-Coder-0.5B (Q4_K_M) served with the same
//! model requantized to Q3_K_S by llama.cpp's `llama-quantize` as its draft (another set
//! of weights over the same vocabulary, so it agrees with the served model often but not
//! always, and both taken and refused proposals happen). Greedy output, its logprobs and
//! usage are those of decoding without the draft, token for token, over many prompts
//! decoded together (continuous batching, speculating or not as the batch allows); sampled
//! output stays reproducible for a seed; a draft of another vocabulary is refused.
//! Model-heavy: run alone, `cargo test --release -p tokenfab-engine --test speculative --
//! --test-threads=1`.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::sampler::SamplingParams;
use tokenfab_engine::scheduler::{
    self, EngineHandle, Event, FinishReason, GenerateRequest, SchedulerConfig, TokenLogprob,
};
use tokenfab_engine::speculative::Draft;
use tokenfab_wire::usage::TokenUsage;

fn load(path: &std::path::Path) -> LoadedModel {
    LoadedModel::load(path, None, Some(4096)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn engine(target: &LoadedModel, draft: Option<Arc<Draft>>) -> EngineHandle {
    scheduler::start(
        target.model.clone(),
        target.tokenizer.clone(),
        None,
        SchedulerConfig {
            threads: 2,
            draft,
            ..Default::default()
        },
    )
    .unwrap()
}

const PROMPTS: [&str; 6] = [
    "Write a Python function that returns the n-th Fibonacci number iteratively.",
    "Explain in two sentences what a mutex is.",
    "Write a Rust function that reverses a vector of integers in place.",
    "List five prime numbers and say why each is prime.",
    "Write a SQL query that counts the orders of each customer.",
    "Translate 'good morning, how are you?' into French and Spanish.",
];

/// One finished generation: its tokens, their logprobs, why it ended, its usage.
#[derive(Debug, PartialEq)]
struct Done {
    tokens: Vec<u32>,
    text: String,
    logprobs: Vec<TokenLogprob>,
    reason: FinishReason,
    usage: TokenUsage,
}

/// Submits the prompts at once (they decode together) and collects each answer.
fn generate(
    engine: &EngineHandle,
    target: &LoadedModel,
    prompts: &[&str],
    sampling: SamplingParams,
    max_tokens: usize,
) -> Vec<Done> {
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let text = format!("<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n");
            let req = GenerateRequest {
                prompt: target.tokenizer.encode(&text, false, true),
                sampling: sampling.clone(),
                fallback_seed: 0,
                max_tokens,
                stop: vec![],
                logprobs: Some(2),
                logprobs_of: Vec::new(),
                prompt_logprobs: None,
                thinking_budget: None,
                split_thought: false,
                constraint: None,
                shown: Vec::new(),
                priority: Default::default(),
            };
            engine.submit(req).unwrap()
        })
        .collect();
    rxs.into_iter()
        .map(|mut rx| {
            let (mut tokens, mut text, mut logprobs) = (Vec::new(), String::new(), Vec::new());
            loop {
                match rx.blocking_recv().expect("events end with Finished") {
                    Event::Token {
                        id,
                        text: t,
                        logprob,
                        ..
                    } => {
                        tokens.push(id);
                        text.push_str(&t.content);
                        logprobs.extend(logprob);
                    }
                    Event::Text(t) => text.push_str(&t.content),
                    Event::Finished { reason, mut usage } => {
                        // What the prefix cache held depends on when each job arrived.
                        usage.cached = 0;
                        return Done {
                            tokens,
                            text,
                            logprobs,
                            reason,
                            usage,
                        };
                    }
                    Event::Prompt(_) => {}
                    Event::Failed(e) => panic!("{e}"),
                }
            }
        })
        .collect()
}

#[test]
fn a_draft_changes_no_greedy_token_and_sampling_stays_seeded() {
    let target = load(&common::qwen_path());
    let draft_path =
        tokenfab_testkit::requantized_dir().join("qwen2.5-coder-0.5b-instruct.Q3_K_S.gguf");
    assert!(
        draft_path.is_file(),
        "{} not found: run scripts/requantize.sh",
        draft_path.display()
    );
    let d = load(&draft_path);
    let mut draft = Draft::new(
        d.model.clone(),
        &d.tokenizer,
        &target.model,
        &target.tokenizer,
    )
    .unwrap();
    // A Q3_K_S draft reads nearly what the Q4_K_M model does, so proposing would not pay
    // and the engine would hardly do it; priced as a small draft, it proposes freely.
    assert!(draft.cost > 0.6 && draft.cost < 1.0, "{}", draft.cost);
    draft.cost = 0.05;
    let draft = Arc::new(draft);

    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    let slow = engine(&target, None);
    let fast = engine(&target, Some(draft.clone()));
    // Three prompts together speculate; six together are too many to (until the first
    // ones end).
    for n in [3, PROMPTS.len()] {
        let plain = generate(&slow, &target, &PROMPTS[..n], greedy.clone(), 48);
        let spec = generate(&fast, &target, &PROMPTS[..n], greedy.clone(), 48);
        for (i, (a, b)) in plain.iter().zip(&spec).enumerate() {
            // Logprobs too, to the bit: a verified position's logits are decoding's.
            let at = a
                .tokens
                .iter()
                .zip(&b.tokens)
                .take_while(|(x, y)| x == y)
                .count();
            assert!(
                a == b,
                "prompt {i} of {n}: the draft changed the output from token {at}: {:?} / {:?} ({:?} / {:?})",
                a.text,
                b.text,
                (a.reason, &a.usage),
                (b.reason, &b.usage)
            );
            assert!(!a.tokens.is_empty());
        }
        assert!(
            plain.iter().any(|d| d.reason == FinishReason::Length),
            "some answer runs to max_tokens, so proposals meet the limit"
        );
    }
    let c = fast.speculation().unwrap();
    let (proposed, accepted) = (
        c.proposed.load(Ordering::Relaxed),
        c.accepted.load(Ordering::Relaxed),
    );
    assert!(
        proposed > 20 && accepted > 0 && accepted < proposed,
        "proposals both taken and refused: {accepted} of {proposed}"
    );
    assert!(c.produced.load(Ordering::Relaxed) > c.steps.load(Ordering::Relaxed));
    assert!(slow.speculation().is_none());

    // Sampling: the served model's distribution (tested in the sampler), the same answer
    // for the same seed, and max_tokens kept exactly.
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(7),
        ..Default::default()
    };
    let a = generate(&fast, &target, &PROMPTS[..3], sampled.clone(), 40);
    let b = generate(&fast, &target, &PROMPTS[..3], sampled, 40);
    assert_eq!(a, b, "a seed gives one answer");
    for d in &a {
        // Usage counts the end-of-generation token, which is no text.
        let ended = usize::from(d.reason == FinishReason::Stop);
        assert_eq!(d.usage.completion as usize, d.tokens.len() + ended, "{d:?}");
        assert!(d.usage.completion <= 40);
        assert_eq!(d.logprobs.len(), d.tokens.len());
    }
}

#[test]
fn a_draft_of_another_vocabulary_is_refused() {
    let target = load(&common::qwen_path());
    let other = load(&common::smollm_path());
    let e = Draft::new(
        other.model.clone(),
        &other.tokenizer,
        &target.model,
        &target.tokenizer,
    )
    .expect_err("SmolLM2 cannot draft for Qwen");
    assert!(e.to_string().contains("vocabulary"), "{e}");
}
