//! `tokenfab bench bandwidth`: how fast this machine streams memory into the cores.
//!
//! Single-stream decode of a model that does not fit the caches reads every weight once
//! per token, so its speed limit is read bandwidth ÷ bytes read per token. The bench
//! measures the first of those instead of assuming it: the given threads each sum their
//! own contiguous share of a buffer much larger than the caches, in huge pages where the
//! kernel gives them (256-bit loads where the CPU has AVX2, prefetched ahead as the
//! engine's kernels prefetch their weights: on this machine the hardware prefetchers alone
//! reach 44-47 GB/s, prefetching 72-73), and the best of several passes is reported, as
//! decode benches report their best-case rate too.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rayon::prelude::*;
use serde_json::json;

#[derive(Args)]
pub struct BandwidthArgs {
    /// Reading threads (the engine's math threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Buffer size in MiB: far beyond the last-level cache.
    #[arg(long, default_value_t = 512)]
    mib: usize,
    /// Passes over the buffer; the fastest is reported.
    #[arg(long, default_value_t = 10)]
    passes: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BandwidthArgs) -> anyhow::Result<()> {
    let threads = args.threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("thread pool")?;
    let words = (args.mib.max(1) << 20) / 8;
    // In the memory the engine keeps weights in (huge pages where the kernel gives them),
    // and written, not just allocated: untouched pages would all read the one zero page.
    // Small pages read much slower (48 against 76 GB/s here), so the share of huge ones is
    // reported with the figure; the kernel may have none free at the moment.
    let before = anon_huge_bytes();
    let mut buf: Vec<u64> = tokenfab_engine::quant::streamed(words);
    for (i, w) in buf.iter_mut().enumerate() {
        *w = i as u64;
    }
    let huge = (anon_huge_bytes().saturating_sub(before) as f64 / (words * 8) as f64).min(1.0);
    let share = words.div_ceil(threads);
    let mut best = 0.0f64;
    for _ in 0..args.passes.max(1) {
        let t = Instant::now();
        let sum = pool.install(|| {
            buf.par_chunks(share)
                .map(read_sum)
                .reduce(|| 0, u64::wrapping_add)
        });
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max((words * 8) as f64 / secs / 1e9);
    }
    if args.json {
        println!(
            "{}",
            json!({"threads": threads, "mib": args.mib, "read_gb_per_s": best,
                   "huge_page_fraction": huge})
        );
    } else {
        println!("| figure | value |");
        println!("|---|---|");
        println!(
            "| streaming read, {threads} threads, {} MiB | {best:.1} GB/s |",
            args.mib
        );
        println!(
            "| share of the buffer in huge pages | {:.0}% |",
            huge * 100.0
        );
    }
    Ok(())
}

/// This process's anonymous memory in transparent huge pages (0 where the kernel does not
/// say).
fn anon_huge_bytes() -> usize {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The wrapping sum of `words`: every byte loaded once, in order.
fn read_sum(words: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected on this CPU.
        return unsafe { read_sum_avx2(words) };
    }
    sum_lanes(words)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_sum_avx2(words: &[u64]) -> u64 {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // Compiled with AVX2 on, the lane sums become 256-bit loads and adds; each 4 KiB is
    // prefetched 8 KiB ahead, as the engine's kernels prefetch their weights, so that the
    // figure is the rate the memory gives, not what the hardware prefetchers guess.
    const STEP: usize = 512; // words: 4 KiB
    let mut sum = 0u64;
    for (i, part) in words.chunks(STEP).enumerate() {
        let ahead = words.as_ptr().wrapping_add((i + 2) * STEP) as *const i8;
        for line in 0..STEP / 8 {
            // A prefetch never faults, wherever it points.
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line));
        }
        sum = sum.wrapping_add(sum_lanes(part));
    }
    sum
}

/// Sums in sixteen independent lanes, so that no add waits for the one before and the
/// loop is bound by the loads alone.
#[inline(always)]
fn sum_lanes(words: &[u64]) -> u64 {
    let mut acc = [0u64; 16];
    let chunks = words.chunks_exact(16);
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &w| a.wrapping_add(w));
    for c in chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_sums_every_word() {
        let words: Vec<u64> = (0..1000).collect();
        assert_eq!(read_sum(&words), 999 * 1000 / 2);
        assert_eq!(read_sum(&words[..7]), 21);
    }
}
