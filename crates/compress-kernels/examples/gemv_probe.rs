//! Quick GEMV timing of every tier on one shape, without burn (fast to build): for iterating on
//! the kernels. `cargo run --release -p compress-kernels --example gemv_probe -- 4096 4096 32`
//! (K, N, group; symmetric 4-bit), prints ms and effective weight GB/s per tier, single- and
//! multi-threaded, with the streaming-read bandwidth measured before and after.

use std::time::Instant;

use compress_kernels::{matmul_with, QuantMatrix, ScaleLayout, Tier};
use half::f16;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (k, n, g) = (
        a.first().copied().unwrap_or(4096),
        a.get(1).copied().unwrap_or(4096),
        a.get(2).copied().unwrap_or(32),
    );
    let bits = a.get(3).copied().unwrap_or(4) as u8;
    let rb = (k * bits as usize).div_ceil(8);
    let codes: Vec<u8> = (0..n * rb)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    let gpr = k.div_ceil(g);
    let scales: Vec<f16> = (0..n * gpr)
        .map(|i| f16::from_f32(0.01 + (i % 7) as f32 * 1e-3))
        .collect();
    let w = QuantMatrix::new(
        bits,
        [n, k],
        ScaleLayout::PerGroup { group_len: g },
        &codes,
        &scales,
        None,
    )
    .unwrap();
    let x: Vec<f32> = (0..k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let mut y = vec![0f32; n];
    let bandwidth = || compress_kernels::bandwidth::streaming_read(256 << 20, 5) / 1e9;
    println!(
        "streaming read (256 MiB, all threads): {:.1} GB/s",
        bandwidth()
    );
    for threads in [1, 0] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for tier in [Tier::Portable, Tier::Avx2, Tier::Avx512, Tier::Avx512Vnni] {
            if !tier.is_available() || tier.format_limit(&w).is_some() {
                continue;
            }
            let t = pool.install(|| {
                matmul_with(tier, &x, 1, &w, &mut y).unwrap();
                let mut best = f64::MAX;
                for _ in 0..30 {
                    let s = Instant::now();
                    matmul_with(tier, &x, 1, &w, &mut y).unwrap();
                    best = best.min(s.elapsed().as_secs_f64());
                }
                best
            });
            println!(
                "threads {}: {tier:12} {:.3} ms  {:.1} GB/s",
                pool.current_num_threads(),
                t * 1e3,
                w.storage_bytes() as f64 / t / 1e9
            );
        }
    }
    println!(
        "streaming read (256 MiB, all threads): {:.1} GB/s",
        bandwidth()
    );
    // Side by side with the streaming read, eleven pairs (see `fraction_of_streaming`).
    let tier = Tier::select(&w, compress_kernels::Activations::Int8);
    let r = compress_kernels::bandwidth::fraction_of_streaming(w.storage_bytes(), 11, || {
        matmul_with(tier, &x, 1, &w, &mut y).unwrap();
    });
    println!(
        "{tier} GEMV / streaming read, side by side: median {:.0}% (range {:.0}–{:.0}%)",
        100.0 * r.median,
        100.0 * r.min,
        100.0 * r.max
    );
}
