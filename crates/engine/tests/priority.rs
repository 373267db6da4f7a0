//! The scheduler's priorities on the real default model: batch jobs fill the capacity
//! interactive jobs leave, and never hold one up. Each test orders events, never times:
//! an interactive job of a few tokens submitted while long batch jobs run finishes before
//! any of them, with the very tokens it gets alone.
//! Model-heavy: `cargo test --release -p tokenfab-engine --test priority -- --test-threads=1`.

mod common;

use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::sampler::SamplingParams;
use tokenfab_engine::scheduler::{
    self, EngineHandle, Event, FinishReason, GenerateRequest, Priority, SchedulerConfig,
};
use tokio::sync::mpsc::UnboundedReceiver;

fn engine(max_running: usize) -> (EngineHandle, LoadedModel) {
    let path = common::smollm_path();
    let m = LoadedModel::load(&path, None, Some(2048))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let handle = scheduler::start(
        m.model.clone(),
        m.tokenizer.clone(),
        None,
        SchedulerConfig {
            threads: 2,
            max_running,
            ..Default::default()
        },
    )
    .unwrap();
    (handle, m)
}

fn request(m: &LoadedModel, text: &str, max_tokens: usize, priority: Priority) -> GenerateRequest {
    GenerateRequest {
        prompt: m.tokenizer.encode(text, true, false),
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        fallback_seed: 0,
        max_tokens,
        stop: Vec::new(),
        logprobs: None,
        logprobs_of: Vec::new(),
        prompt_logprobs: None,
        thinking_budget: None,
        split_thought: false,
        constraint: None,
        shown: Vec::new(),
        priority,
    }
}

/// Waits for a job's first token.
fn first_token(rx: &mut UnboundedReceiver<Event>) {
    loop {
        match rx.blocking_recv() {
            Some(Event::Token { .. }) => return,
            Some(ev @ (Event::Finished { .. } | Event::Failed(_))) => {
                panic!("the job ended before its first token: {ev:?}")
            }
            None => panic!("the job's channel closed before its first token"),
            Some(_) => {}
        }
    }
}

/// A job's tokens, to its end.
fn tokens(mut rx: UnboundedReceiver<Event>) -> (Vec<u32>, FinishReason) {
    let mut out = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token { id, .. } => out.push(id),
            Event::Finished { reason, .. } => return (out, reason),
            Event::Failed(e) => panic!("generation failed: {e}"),
            _ => {}
        }
    }
    panic!("the job's channel closed without an end")
}

/// Whether a job has ended, from the events it has sent so far.
fn ended(rx: &mut UnboundedReceiver<Event>) -> bool {
    while let Ok(ev) = rx.try_recv() {
        if matches!(ev, Event::Finished { .. } | Event::Failed(_)) {
            return true;
        }
    }
    false
}

const QUESTIONS: [&str; 2] = [
    "What is the capital of France?",
    "Name three primary colors.",
];

#[test]
fn interactive_jobs_overtake_batch_jobs_that_fill_every_slot() {
    let (engine, m) = engine(2);
    // Alone first: what each interactive job answers without company.
    let mut alone = Vec::new();
    for q in QUESTIONS {
        let rx = engine
            .submit(request(&m, q, 6, Priority::Interactive))
            .unwrap();
        alone.push(tokens(rx));
    }
    // Three long batch jobs: two fill both slots, the third waits for one.
    let mut batch: Vec<_> = (0..3)
        .map(|i| {
            let text = format!("Write a long story about a robot number {i}.");
            let mut r = request(&m, &text, 1500, Priority::Batch);
            // Never ends of itself: only `max_tokens` ends it.
            for id in m.tokenizer.eog_ids() {
                r.sampling.logit_bias.insert(id, -100.0);
            }
            engine.submit(r).unwrap()
        })
        .collect();
    first_token(&mut batch[0]);
    first_token(&mut batch[1]);
    // Every slot is a batch job's: the interactive jobs are admitted anyway, run to
    // their end while the batch jobs are far from theirs, and answer as they did alone.
    let interactive: Vec<_> = QUESTIONS
        .iter()
        .map(|q| {
            engine
                .submit(request(&m, q, 6, Priority::Interactive))
                .unwrap()
        })
        .collect();
    let mut answers = Vec::new();
    for rx in interactive {
        answers.push(tokens(rx));
    }
    for (i, rx) in batch.iter_mut().enumerate() {
        assert!(
            !ended(rx),
            "batch job {i} ended before the interactive jobs"
        );
    }
    assert_eq!(answers, alone);
}

#[test]
fn batch_jobs_alone_use_every_slot_and_finish() {
    let (engine, m) = engine(2);
    let jobs: Vec<_> = (0..5)
        .map(|i| {
            let text = format!("Count to {i}.");
            engine
                .submit(request(&m, &text, 8, Priority::Batch))
                .unwrap()
        })
        .collect();
    for rx in jobs {
        let (out, _) = tokens(rx);
        assert!(!out.is_empty());
    }
    // And batch answers are the interactive ones: priority changes when, never what.
    let q = QUESTIONS[0];
    let batch = tokens(engine.submit(request(&m, q, 6, Priority::Batch)).unwrap());
    let inter = tokens(
        engine
            .submit(request(&m, q, 6, Priority::Interactive))
            .unwrap(),
    );
    assert_eq!(batch, inter);
}
