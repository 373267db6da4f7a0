//! Rough speed check of the forward pass: a 512-token prompt, then 128 greedy decode
//! steps, on a 2-thread rayon pool (the engine's default on small machines).
//!
//! `cargo run --release -p tokenfab-engine --example bench_forward -- MODEL.gguf [threads]`

use std::time::Instant;

use tokenfab_engine::gguf::GgufFile;
use tokenfab_engine::model::{Model, SeqInput};

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
        let prompt: Vec<u32> = (0..512u32).map(|i| (i * 7919 + 101) % vocab.min(30000)).collect();
        let mut scratch = model.new_scratch();
        let mut kv = model.new_kv_cache();
        let t = Instant::now();
        let mut logits = model
            .forward(&mut [SeqInput { tokens: &prompt, kv: &mut kv }], &mut scratch)
            .unwrap()
            .remove(0);
        let pp = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let steps = 128;
        for _ in 0..steps {
            let next = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap();
            logits = model
                .forward(&mut [SeqInput { tokens: &[next], kv: &mut kv }], &mut scratch)
                .unwrap()
                .remove(0);
        }
        let tg = t.elapsed().as_secs_f64();
        println!(
            "{threads} threads: prompt 512 tokens {:.1} tok/s ({pp:.2}s); decode {steps} tokens {:.1} tok/s",
            512.0 / pp,
            steps as f64 / tg
        );
    });
}
