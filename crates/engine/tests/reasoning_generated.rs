//! Streamed and whole output split identically on real generated token sequences: the
//! engine runs SmolLM2 (made to think by a worked example) with many seeds, both with the
//! thought opened by the prompt and not, some with tiny thinking budgets; for every run the
//! thought and answer assembled from the token events must equal the reference split of the
//! complete generated text. (`reasoning.rs` proves the same over synthetic texts with
//! random chunkings.)

mod common;

use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::sampler::SamplingParams;
use tokenfab_engine::scheduler::{self, Event, GenerateRequest, SchedulerConfig};
use tokenfab_engine::template::TemplateMessage;
use tokenfab_text::reasoning::{ThinkTags, split_complete};
use tokenfab_text::utf8::Utf8Stream;

fn msg(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage {
        role: role.into(),
        content: content.into(),
        extra: Default::default(),
    }
}

#[test]
fn streamed_split_equals_whole_split_on_generated_sequences() {
    let path = common::smollm_path();
    let mut loaded = LoadedModel::load(&path, None, Some(2048)).unwrap_or_else(|e| {
        panic!("{e}: fetch the model with `cargo run --release -- models fetch` (or set TOKENFAB_TEST_MODEL)")
    });
    loaded.set_reasoning(Some(true), None, None);
    let template = loaded.template.as_ref().unwrap();
    let conversation = [
        msg(
            "system",
            "Always think step by step inside <think></think> tags before answering. After </think>, give only the final answer.",
        ),
        msg("user", "What is 2 + 2?"),
        msg(
            "assistant",
            "<think>\nI need to add 2 and 2. 2 + 2 = 4.\n</think>\n\nThe answer is 4.",
        ),
        msg("user", "奥运会的传奇名将有哪些?"),
    ];
    let text = template
        .render(&conversation, true, &Default::default())
        .unwrap();
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
    let mut runs = Vec::new();
    for seed in 0..16u64 {
        let opened = seed % 2 == 1;
        let prompt_text = if opened {
            format!("{text}<think>\n")
        } else {
            text.clone()
        };
        let req = GenerateRequest {
            prompt: loaded.tokenizer.encode(&prompt_text, true, true),
            sampling: SamplingParams {
                temperature: 1.2,
                seed: Some(seed),
                ..Default::default()
            },
            fallback_seed: 0,
            max_tokens: 32,
            stop: vec![],
            logprobs: None,
            logprobs_of: Vec::new(),
            prompt_logprobs: None,
            // The engine finds the opened thought in the prompt itself.
            thinking_budget: Some(if seed % 4 < 2 {
                4096
            } else {
                6 + seed as usize
            }),
            split_thought: true,
            shown: Vec::new(),
            priority: Default::default(),
            constraint: None,
        };
        runs.push((opened, engine.submit(req).unwrap()));
    }
    let mut saw_thought = 0;
    for (opened, mut rx) in runs {
        let (mut reasoning, mut content, mut bytes) = (String::new(), String::new(), Vec::new());
        let mut finished = None;
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Token { id, text, .. } => {
                    bytes.extend_from_slice(loaded.tokenizer.token_bytes(id));
                    reasoning.push_str(&text.reasoning);
                    content.push_str(&text.content);
                }
                Event::Text(text) => {
                    reasoning.push_str(&text.reasoning);
                    content.push_str(&text.content);
                }
                Event::Finished { usage, .. } => {
                    finished = Some((usage.completion, usage.reasoning))
                }
                Event::Failed(e) => panic!("{e}"),
                Event::Prompt(_) => unreachable!("no prompt logprobs were asked for"),
            }
        }
        let (completion, reasoning_tokens) = finished.expect("finished");
        assert!(reasoning_tokens <= completion);
        let mut utf8 = Utf8Stream::new();
        let whole_text = utf8.push(&bytes);
        let whole = split_complete(&whole_text, &ThinkTags::default(), opened);
        assert_eq!(
            (reasoning.as_str(), content.as_str()),
            (whole.reasoning.as_str(), whole.content.as_str()),
            "generated {whole_text:?}"
        );
        saw_thought += usize::from(!reasoning.is_empty());
    }
    assert!(
        saw_thought >= 8,
        "the worked example should make most runs think"
    );
}
