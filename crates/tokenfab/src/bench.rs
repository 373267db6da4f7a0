//! `tokenfab bench`: prompt-processing and decode speed of the engine on one model, the
//! figures the engine issues are judged by (tokens/s, N-token prompt then M greedy tokens).
//!
//! It drives the model directly (no HTTP, no scheduler), so it measures the forward pass.
//! It reports the machine's load average first: on 2 cores, another busy process halves
//! the figures, and a number without that context misleads.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use tokenfab_engine::loader::LoadedModel;
use tokenfab_engine::model::SeqInput;
use tokenfab_engine::sampler::argmax;
use tokenfab_models::{DEFAULT_MODEL, ModelSpec, default_cache_dir};

#[derive(Args)]
pub struct BenchArgs {
    /// Model: catalog id, local path, or hf: spec.
    #[arg(long, short, default_value = DEFAULT_MODEL)]
    model: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Generated tokens after the prompt.
    #[arg(long, default_value_t = 128)]
    generate: usize,
    /// Math threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, env = "TOKENFAB_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let spec: ModelSpec = args.model.parse()?;
    let resolved = spec.resolve(
        &args.cache_dir.clone().unwrap_or_else(default_cache_dir),
        true,
    )?;
    let loaded = LoadedModel::load(&resolved.path, None, None)?;
    let model = &loaded.model;
    anyhow::ensure!(
        args.prompt + args.generate <= loaded.context_length,
        "prompt + generate ({}) exceeds the context window ({})",
        args.prompt + args.generate,
        loaded.context_length
    );
    // A real text prompt, repeated to the wanted length.
    let text = "The history of the Olympic Games goes back to ancient Greece, where athletes competed \
                in running, wrestling and chariot racing. ";
    let mut prompt = Vec::new();
    while prompt.len() < args.prompt {
        prompt.extend(loaded.tokenizer.encode(text, false, false));
    }
    prompt.truncate(args.prompt);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.max(1))
        .build()
        .context("thread pool")?;

    println!("model: {} ({})", resolved.id, resolved.path.display());
    println!(
        "threads: {}, prompt: {} tokens, generate: {} tokens, runs: {}",
        args.threads, args.prompt, args.generate, args.runs
    );
    println!("load average before: {}", load_average());
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    let mut scratch = model.new_scratch();
    for _ in 0..args.runs.max(1) {
        let mut kv = model.new_kv_cache();
        let t0 = Instant::now();
        let logits = pool.install(|| {
            model.forward(
                &mut [SeqInput {
                    tokens: &prompt,
                    kv: &mut kv,
                }],
                &mut scratch,
            )
        })?;
        pp.push(args.prompt as f64 / t0.elapsed().as_secs_f64());
        let mut next = argmax(&logits[0]);
        let t1 = Instant::now();
        for _ in 0..args.generate {
            let logits = pool.install(|| {
                model.forward(
                    &mut [SeqInput {
                        tokens: &[next],
                        kv: &mut kv,
                    }],
                    &mut scratch,
                )
            })?;
            next = argmax(&logits[0]);
        }
        tg.push(args.generate as f64 / t1.elapsed().as_secs_f64());
    }
    println!("| figure | tokens/s |");
    println!("|---|---|");
    println!(
        "| prompt processing ({} tokens) | {:.1} |",
        args.prompt,
        median(pp)
    );
    println!(
        "| decode after {} tokens ({} tokens) | {:.1} |",
        args.prompt,
        args.generate,
        median(tg)
    );
    println!("load average after: {}", load_average());
    Ok(())
}
