//! `tokenfab bench embed`: sentences per second of the encoder on a list of texts (a JSON
//! array of strings), in batches of `--batch` as sentence-transformers' `encode` takes
//! them, so that `bench/run.sh` compares the two on the same texts and the same batches.
//! Tokenizing is counted: it is part of embedding a text.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokenfab_engine::encoder::Encoder;
use tokenfab_models::{ModelSpec, default_cache_dir};

use crate::bench::{load_average, median};

#[derive(Args)]
pub struct EmbedArgs {
    /// Model: catalog id or local path of an embedding model.
    #[arg(long, short, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    model: String,
    /// A JSON file holding an array of strings.
    #[arg(long)]
    input: PathBuf,
    /// Texts per call to the encoder.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Math threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Repetitions after one warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[arg(long, env = "TOKENFAB_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

pub fn run(a: EmbedArgs) -> anyhow::Result<()> {
    let texts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(&a.input)
            .with_context(|| format!("cannot read {}", a.input.display()))?,
    )
    .with_context(|| format!("{} is not a JSON array of strings", a.input.display()))?;
    anyhow::ensure!(!texts.is_empty(), "{} holds no texts", a.input.display());
    let cache = a.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let spec: ModelSpec = a.model.parse()?;
    let path = spec.resolve(&cache, true)?.path;
    let encoder =
        Encoder::load(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.max(1))
        .build()?;
    let load_before = load_average();
    let once = || -> anyhow::Result<(f64, usize)> {
        let start = Instant::now();
        let mut tokens = 0;
        for batch in texts.chunks(a.batch.max(1)) {
            let ids: Vec<Vec<u32>> = batch
                .iter()
                .map(|t| {
                    let mut ids = encoder.tokenizer.encode(t, true, false);
                    // As sentence-transformers cuts at `max_seq_length` (the API refuses).
                    ids.truncate(encoder.config.context_length);
                    ids
                })
                .collect();
            tokens += ids.iter().map(Vec::len).sum::<usize>();
            let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            pool.install(|| encoder.embed(&refs))?;
        }
        Ok((start.elapsed().as_secs_f64(), tokens))
    };
    once()?;
    let mut rates = Vec::new();
    let mut tokens = 0;
    for _ in 0..a.runs.max(1) {
        let (secs, n) = once()?;
        tokens = n;
        rates.push(texts.len() as f64 / secs);
    }
    let rate = median(rates);
    if a.json {
        println!(
            "{}",
            json!({"model": a.model, "sentences": texts.len(), "tokens": tokens, "batch": a.batch,
                   "threads": a.threads, "sentences_per_s": rate, "load_before": load_before,
                   "load_after": load_average()})
        );
    } else {
        println!("| figure | tokens/s |");
        println!("|---|---|");
        println!(
            "| {} sentences ({tokens} tokens), batches of {} | {rate:.1} sentences/s |",
            texts.len(),
            a.batch
        );
        println!("load average after: {}", load_average());
    }
    Ok(())
}
