//! A streaming-read bandwidth probe, so GEMV speed can be stated as a fraction of what the
//! memory system delivers on the same machine.

use std::time::Instant;

use rayon::prelude::*;

/// Reads a buffer of `bytes` (rounded down to whole 64-byte lines) `repeats` times on all rayon
/// threads, summing it so the reads cannot be optimised away, and returns the best pass in
/// bytes per second. Use a buffer several times the last-level cache to measure DRAM.
pub fn streaming_read(bytes: usize, repeats: usize) -> f64 {
    let words = (bytes / 64 * 8).max(8);
    let buf: Vec<u64> = (0..words as u64).collect();
    let chunk = (words / (8 * rayon::current_num_threads())).max(8);
    let mut best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        sink ^= buf
            .par_chunks(chunk)
            .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
            .reduce(|| 0, u64::wrapping_add);
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / best
}
