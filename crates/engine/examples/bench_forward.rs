//! Rough speed check of the forward pass on a rayon pool of `threads` threads (default 2,
//! the engine's default on small machines):
//!
//! - one sequence: a 512-token prompt, then 128 greedy decode steps;
//! - a batch: 16 sequences each prefilled with its own 128-token prompt, then 64 decode
//!   steps where every step is ONE forward over all 16 sequences (one token each); the
//!   figure is the aggregate of generated tokens per second.
//!
//! `cargo run --release -p tokenfab-engine --example bench_forward -- MODEL.gguf [threads]`

use std::time::Instant;

use tokenfab_engine::gguf::GgufFile;
use tokenfab_engine::model::{KvCache, Model, SeqInput};

fn argmax(logits: &[f32]) -> u32 {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap()
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: bench_forward MODEL.gguf [threads]");
    let threads: usize = std::env::args()
        .nth(2)
        .map_or(2, |t| t.parse().expect("threads"));
    let g = GgufFile::open(&path).expect("open model");
    let t0 = Instant::now();
    let model = Model::load(&g).expect("load model");
    println!(
        "{}: {} layers, {} MB of weights, loaded in {:.2}s",
        model.config.arch,
        model.config.n_layer,
        model.weight_bytes() / 1_000_000,
        t0.elapsed().as_secs_f64()
    );
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let vocab = model.config.vocab_size as u32;
        let mut scratch = model.new_scratch();

        // One sequence.
        let prompt: Vec<u32> = (0..512u32)
            .map(|i| (i * 7919 + 101) % vocab.min(30000))
            .collect();
        let mut kv = model.new_kv_cache();
        let t = Instant::now();
        let mut logits = model
            .forward(
                &mut [SeqInput::last(&prompt, &mut kv)],
                &mut scratch,
            )
            .unwrap()
            .remove(0);
        let pp = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let steps = 128;
        for _ in 0..steps {
            let next = argmax(&logits);
            logits = model
                .forward(
                    &mut [SeqInput::last(&[next], &mut kv)],
                    &mut scratch,
                )
                .unwrap()
                .remove(0);
        }
        let tg = t.elapsed().as_secs_f64();
        println!(
            "{threads} threads: prompt 512 tokens {:.1} tok/s ({pp:.2}s); decode {steps} tokens {:.1} tok/s",
            512.0 / pp,
            steps as f64 / tg
        );

        // A batch of 16 sequences, stepped together.
        let n_seq = 16;
        let prompt_len = 128;
        let steps = 64;
        let prompts: Vec<Vec<u32>> = (0..n_seq as u32)
            .map(|s| {
                (0..prompt_len as u32)
                    .map(|i| (i * 7919 + s * 104_729 + 101) % vocab.min(30000))
                    .collect()
            })
            .collect();
        let mut kvs: Vec<KvCache> = (0..n_seq).map(|_| model.new_kv_cache()).collect();
        let t = Instant::now();
        let mut batch: Vec<SeqInput> = prompts
            .iter()
            .zip(kvs.iter_mut())
            .map(|(p, kv)| SeqInput::last(p, kv))
            .collect();
        let mut all_logits = model.forward(&mut batch, &mut scratch).unwrap();
        drop(batch);
        let pp = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..steps {
            let next: Vec<u32> = all_logits.iter().map(|l| argmax(l)).collect();
            let mut batch: Vec<SeqInput> = next
                .iter()
                .zip(kvs.iter_mut())
                .map(|(tok, kv)| SeqInput::last(std::slice::from_ref(tok), kv))
                .collect();
            all_logits = model.forward(&mut batch, &mut scratch).unwrap();
        }
        let tg = t.elapsed().as_secs_f64();
        println!(
            "{threads} threads, {n_seq} sequences: prompts {n_seq}x{prompt_len} tokens in one step \
             {:.1} tok/s ({pp:.2}s); batched decode {steps} steps {:.1} tok/s aggregate \
             ({:.1} steps/s)",
            (n_seq * prompt_len) as f64 / pp,
            (n_seq * steps) as f64 / tg,
            steps as f64 / tg
        );
    });
}
