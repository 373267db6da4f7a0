//! Golden tests against llama.cpp's greedy outputs (see tests/data and
//! /work/shared/golden/README.md), plus the forward pass's own invariants: prefilling N
//! tokens at once equals feeding them one by one, and batching sequences does not change
//! their logits.
//!
//! These need the model files. A missing file is a failure with instructions, never a
//! silent skip. Run in release: `cargo test --release -p tokenfab-engine --test golden`.

use std::path::PathBuf;
use std::sync::OnceLock;

mod common;

use common::golden::{Tolerance, run_golden};
use tokenfab_engine::gguf::GgufFile;
use tokenfab_engine::model::{Model, SeqInput};
use tokenfab_engine::sampler::Rng;

fn load(path: PathBuf) -> Model {
    let g = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Model::load(&g).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn smollm2() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load(common::smollm_path()))
}

fn qwen() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load(common::qwen_path()))
}

fn gemma() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| load(common::gemma_path()))
}

#[test]
fn golden_smollm2() {
    run_golden(
        smollm2(),
        "smollm2-135m-instruct-q4_1.jsonl",
        // The worst single value (1.17) is token 28 at line 6, step 10.
        Tolerance {
            median: 0.1,
            p90: 0.3,
            max: 1.5,
            ..Tolerance::GOLDEN
        },
    );
}

#[test]
fn golden_qwen2() {
    run_golden(
        qwen(),
        "qwen2.5-coder-0.5b-instruct-q4_k_m.jsonl",
        Tolerance {
            median: 0.1,
            p90: 0.3,
            max: 1.0,
            ..Tolerance::GOLDEN
        },
    );
}

/// gemma3: head length 256 (not n_embd / n_head), q/k norms, post-norms, GeGLU, scaled
/// embeddings, interleaved sliding-window layers (the last line's 789-token prompt goes past
/// the 512-token window), tied output. Measured: median 0.08, p90 0.27, p99 0.61, worst 0.77
/// nats; llama.cpp against itself (flash attention off, then also an f32 KV cache) moves
/// first-step logprobs of this model by up to 0.3 nats.
#[test]
fn golden_gemma3() {
    run_golden(
        gemma(),
        "gemma-3-270m-q4_k_m.jsonl",
        Tolerance {
            median: 0.1,
            p90: 0.3,
            max: 1.0,
            ..Tolerance::GOLDEN
        },
    );
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Prefill as one matrix must equal token-by-token decoding: same math, different grouping.
/// Every position's logits (what a speculative step verifies) are the very bits decoding
/// token by token gives. `n` tokens, then the last `n - keep` recomputed after
/// truncating to `keep`.
fn prefill_matches_incremental(model: &Model, n: u32, keep: usize) {
    let tokens: Vec<u32> = (0..n).map(|i| (i * 7919 + 13) % 5000 + 1).collect();
    let vocab = model.config.vocab_size;
    let mut scratch = model.new_scratch();
    let mut kv = model.new_kv_cache();
    let every = model
        .forward(
            &mut [SeqInput {
                tokens: &tokens,
                kv: &mut kv,
                all_logits: true,
            }],
            &mut scratch,
        )
        .unwrap()
        .remove(0);
    assert_eq!(every.len(), tokens.len() * vocab);
    // A draft's head: the first logits of each row, the same values.
    let head = model
        .forward_head(
            &mut [SeqInput {
                tokens: &tokens,
                kv: &mut model.new_kv_cache(),
                all_logits: true,
            }],
            &mut scratch,
            1000,
        )
        .unwrap()
        .remove(0);
    for (i, row) in head.chunks_exact(1000).enumerate() {
        assert!(
            row == &every[i * vocab..i * vocab + 1000],
            "position {i}'s head"
        );
    }
    let all = every[(tokens.len() - 1) * vocab..].to_vec();
    let mut kv1 = model.new_kv_cache();
    let mut last = Vec::new();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    for (i, t) in tokens.iter().enumerate() {
        last = model
            .forward(
                &mut [SeqInput::last(std::slice::from_ref(t), &mut kv1)],
                &mut scratch,
            )
            .unwrap()
            .remove(0);
        assert!(
            bits(&last) == bits(&every[i * vocab..(i + 1) * vocab]),
            "position {i}: its logits in the prefill differ from decoding's"
        );
    }
    assert_eq!(kv.len(), tokens.len());
    let d = max_abs_diff(&all, &last);
    assert!(d < 1e-3, "prefill vs incremental: max abs diff {d}");

    // Prefix reuse: truncate and recompute the tail in one chunk.
    kv1.truncate(keep);
    let again = model
        .forward(
            &mut [SeqInput::last(&tokens[keep..], &mut kv1)],
            &mut scratch,
        )
        .unwrap()
        .remove(0);
    let d = max_abs_diff(&all, &again);
    assert!(d < 1e-3, "truncate + re-prefill: max abs diff {d}");
}

#[test]
fn prefill_matches_incremental_smollm2() {
    prefill_matches_incremental(smollm2(), 40, 25);
}

#[test]
fn prefill_matches_incremental_qwen2() {
    prefill_matches_incremental(qwen(), 40, 25);
}

/// Past gemma3's 512-token window, and re-prefilled from inside it: the sliding layers'
/// views start mid-cache, in the same place whichever way the cache was filled.
#[test]
fn prefill_matches_incremental_gemma3() {
    prefill_matches_incremental(gemma(), 600, 530);
}

#[test]
fn batch_invariance() {
    let model = smollm2();
    let a: Vec<u32> = vec![1, 504, 3575, 282, 4649, 314];
    let b: Vec<u32> = vec![1, 9690, 28, 2114, 359];
    let mut scratch = model.new_scratch();
    let alone = |t: &[u32], scratch: &mut _| {
        let mut kv = model.new_kv_cache();
        model
            .forward(&mut [SeqInput::last(t, &mut kv)], scratch)
            .unwrap()
            .remove(0)
    };
    let la = alone(&a, &mut scratch);
    let lb = alone(&b, &mut scratch);
    let (mut ka, mut kb) = (model.new_kv_cache(), model.new_kv_cache());
    let both = model
        .forward(
            &mut [SeqInput::last(&a, &mut ka), SeqInput::last(&b, &mut kb)],
            &mut scratch,
        )
        .unwrap();
    assert!(max_abs_diff(&both[0], &la) < 1e-5);
    assert!(max_abs_diff(&both[1], &lb) < 1e-5);
}

#[test]
fn bad_inputs_are_errors() {
    let model = smollm2();
    let mut scratch = model.new_scratch();
    let mut kv = model.new_kv_cache();
    let vocab = model.config.vocab_size as u32;
    let err = model
        .forward(&mut [SeqInput::last(&[1, vocab], &mut kv)], &mut scratch)
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    assert!(kv.is_empty(), "a refused step must not touch the cache");
    let long = vec![1u32; model.config.context_length + 1];
    let err = model
        .forward(&mut [SeqInput::last(&long, &mut kv)], &mut scratch)
        .unwrap_err()
        .to_string();
    assert!(err.contains("context length"), "{err}");
    let err = model
        .forward(&mut [SeqInput::last(&[], &mut kv)], &mut scratch)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one token"), "{err}");
}

/// Uniform in `lo..=hi`.
fn range(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
}

/// `n` ordinary text ids, well inside both vocabularies.
fn tokens(rng: &mut Rng, n: usize) -> Vec<u32> {
    (0..n).map(|_| range(rng, 100, 20_000) as u32).collect()
}

/// The target sequence's steps: prompt chunks and decode tokens, fixed (teacher-forced) so
/// that its logits can be compared step by step.
fn target_steps() -> Vec<Vec<u32>> {
    vec![
        vec![1, 504, 3575, 282, 4649, 314, 2114, 359, 9690, 28, 17, 2706],
        vec![4480],
        vec![282, 30, 1117, 3575, 76],
        vec![359],
        vec![2114],
    ]
}

fn run_alone(model: &Model, steps: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let mut scratch = model.new_scratch();
    let mut kv = model.new_kv_cache();
    steps
        .iter()
        .map(|t| {
            model
                .forward(&mut [SeqInput::last(t, &mut kv)], &mut scratch)
                .unwrap()
                .remove(0)
        })
        .collect()
}

/// Runs the target's steps inside random batches and requires its logits to be EXACTLY
/// those of running it alone (computed on a 1-thread pool, while the batches run on 3
/// threads, so thread splitting is covered too). Each composition draws a batch size in
/// 2..=9 (sizes cycle so all occur), neighbours with their own caches, and at every step
/// each neighbour sends a prompt chunk of 1 to 40 tokens or one decode token, in a shuffled
/// order with the target at a random place.
fn batch_invariance_random(model: &Model, compositions: usize, seed: u64) {
    let steps = target_steps();
    let alone = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| run_alone(model, &steps));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let mut rng = Rng::new(seed);
    let mut scratch = model.new_scratch();
    for comp in 0..compositions {
        let size = 2 + (comp + range(&mut rng, 0, 7)) % 8;
        let mut kvs: Vec<_> = (0..size).map(|_| model.new_kv_cache()).collect();
        for (si, (step, want)) in steps.iter().zip(&alone).enumerate() {
            // Slot 0 is the target; the others are neighbours.
            let inputs: Vec<Vec<u32>> = (0..size)
                .map(|i| {
                    if i == 0 {
                        step.clone()
                    } else if range(&mut rng, 0, 2) == 0 {
                        let n = range(&mut rng, 1, 40);
                        tokens(&mut rng, n)
                    } else {
                        tokens(&mut rng, 1)
                    }
                })
                .collect();
            let mut order: Vec<usize> = (0..size).collect();
            for i in (1..size).rev() {
                order.swap(i, range(&mut rng, 0, i));
            }
            let mut slots: Vec<Option<&mut _>> = kvs.iter_mut().map(Some).collect();
            let mut batch: Vec<SeqInput> = order
                .iter()
                .map(|&i| SeqInput::last(&inputs[i], slots[i].take().unwrap()))
                .collect();
            let logits = pool.install(|| model.forward(&mut batch, &mut scratch).unwrap());
            let at = order.iter().position(|&i| i == 0).unwrap();
            let shape: Vec<usize> = order.iter().map(|&i| inputs[i].len()).collect();
            assert!(
                logits[at] == *want,
                "composition {comp} step {si}: target at {at} of batch {shape:?} differs from \
                 running alone (max abs diff {})",
                max_abs_diff(&logits[at], want)
            );
        }
    }
}

#[test]
fn batch_invariance_random_smollm2() {
    batch_invariance_random(smollm2(), 30, 0x5eed_0001);
}

#[test]
fn batch_invariance_random_qwen2() {
    batch_invariance_random(qwen(), 4, 0x5eed_0002);
}

/// Steps with more rows than one pass through the layer stack takes (512) split sequences
/// across passes; that must not change a bit either: a target whose prompt straddles the
/// pass boundary behind a long neighbour, and one long prompt in one step vs in two.
#[test]
fn batch_invariance_across_passes() {
    let model = smollm2();
    let mut rng = Rng::new(0x5eed_0003);
    let neighbour = tokens(&mut rng, 450);
    let target = tokens(&mut rng, 200);
    let alone = run_alone(model, std::slice::from_ref(&target)).remove(0);
    let mut scratch = model.new_scratch();
    let (mut kn, mut kt) = (model.new_kv_cache(), model.new_kv_cache());
    let logits = model
        .forward(
            &mut [
                SeqInput::last(&neighbour, &mut kn),
                SeqInput::last(&target, &mut kt),
            ],
            &mut scratch,
        )
        .unwrap();
    assert_eq!(kt.len(), target.len());
    assert!(
        logits[1] == alone,
        "target split over two passes: max abs diff {}",
        max_abs_diff(&logits[1], &alone)
    );

    let long = tokens(&mut rng, 600);
    let whole = run_alone(model, std::slice::from_ref(&long)).remove(0);
    let halves = run_alone(model, &[long[..300].to_vec(), long[300..].to_vec()]);
    assert!(
        halves[1] == whole,
        "600 tokens in one step vs two: max abs diff {}",
        max_abs_diff(&halves[1], &whole)
    );
}

/// gemma3's extra steps (q/k and post-norms, GeGLU, its two rotary sets and the windowed
/// views) keep a sequence's logits independent of its batch.
#[test]
fn batch_invariance_random_gemma3() {
    batch_invariance_random(gemma(), 4, 0x5eed_0004);
}
