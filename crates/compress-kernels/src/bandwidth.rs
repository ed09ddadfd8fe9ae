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

/// The rate of a memory-bound operation as a fraction of the streaming read, measured side by
/// side: `pairs` times, the best of three streaming-read passes over a 256 MiB buffer, then the
/// best of three calls of `f` (which reads `bytes` bytes). The median and range of the pairs'
/// ratios stay meaningful on a machine whose speed changes from minute to minute, where two
/// separately timed numbers would not.
pub fn fraction_of_streaming(bytes: usize, pairs: usize, mut f: impl FnMut()) -> Fraction {
    let mut ratios: Vec<f64> = (0..pairs.max(1))
        .map(|_| {
            let bw = streaming_read(256 << 20, 3);
            let best = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min);
            bytes as f64 / best / bw
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    Fraction {
        median: ratios[ratios.len() / 2],
        min: ratios[0],
        max: ratios[ratios.len() - 1],
    }
}

/// Ratios from [`fraction_of_streaming`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fraction {
    /// Median over the pairs.
    pub median: f64,
    /// Smallest ratio.
    pub min: f64,
    /// Largest ratio.
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_the_same_buffer_is_close_to_one_streaming_read() {
        // Reading a buffer as large as the probe's, the same way, is a ratio near 1; a loose
        // range because other work may share the machine.
        let buf: Vec<u64> = (0..(32u64 << 20)).collect();
        let r = fraction_of_streaming(256 << 20, 3, || {
            std::hint::black_box(buf.iter().fold(0u64, |a, &v| a.wrapping_add(v)));
        });
        assert!(r.min <= r.median && r.median <= r.max);
        assert!(r.median > 0.2 && r.median < 5.0, "{r:?}");
    }
}
