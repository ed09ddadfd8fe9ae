//! Fused low-bit matmul against burn's dense f32 matmul, side by side in one run, printed as
//! Markdown tables (what docs/performance.md quotes), plus the machine's streaming-read
//! bandwidth and GEMV on a weight larger than the last-level cache as a fraction of it.
//!
//! ```text
//! cargo run --release --example kernel_speed                # all shapes, M = 1, 16, 512
//! cargo run --release --example kernel_speed -- --rows 1    # decode only (about a minute)
//! cargo run --release --example kernel_speed -- --sparse24   # the 2:4-sparse int4 table
//! ```
//! Each time is the median of repeated runs (at least 3, until 0.5 s has been spent).

#[path = "common/kernel_cases.rs"]
mod cases;

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use clap::Parser;
use compress::core::backend::BackendKind;
use compress::kernels::bandwidth::{fraction_of_streaming, streaming_read};
use compress::kernels::{matmul_with, Activations, QuantMatrix, Tier};

#[derive(Parser, Debug)]
#[command(about = "Fused low-bit matmul vs dense f32, side by side")]
struct Args {
    /// Activation rows to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = cases::ROWS)]
    rows: Vec<usize>,
    /// Skip the larger-than-cache GEMV and the bandwidth probe.
    #[arg(long)]
    no_large: bool,
    /// Only the 2:4-sparse table: int4 g32 with a 2:4 pattern in the compact layout
    /// (`compress_kernels::sparse24`) against the same codes in the dense layout and dense f32.
    #[arg(long)]
    sparse24: bool,
}

/// The 2:4 table: per shape and row count, dense f32 vs int4 g32 in the dense layout (every
/// code stored; a pruned layer reads the same bytes) vs the compact 2:4 layout of the same
/// codes (kept codes and positions only).
fn sparse24_table(rows: &[usize], device: &burn::tensor::Device) {
    use compress::kernels::sparse24;
    let f = cases::FORMATS[1];
    assert_eq!(f.name, "int4-g32");
    println!("| M | K×N | dense f32 (flex) | int4-g32 dense layout | int4-g32 2:4 layout | 2:4 vs f32 | 2:4 vs dense int4 | bytes read (2:4 / int4) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, n) in cases::SHAPES {
        let wt = Tensor::<2>::from_data(TensorData::new(cases::values(k * n, 1), [k, n]), device);
        let p = cases::packed(f, n, k, 2);
        let w = p.kernel_matrix().unwrap();
        let s = cases::sparse24(&p, 7);
        for &m in rows {
            let x = cases::values(m * k, 3);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), device);
            let dense = time(|| {
                xt.clone().matmul(wt.clone()).into_data();
            });
            let mut y = vec![0f32; m * n];
            let tier = Tier::select(&w, Activations::F32);
            let t4 = time(|| matmul_with(tier, &x, m, &w, &mut y).unwrap());
            let t24 = time(|| {
                sparse24::matmul(&x, m, &s, &mut y).unwrap();
            });
            println!(
                "| {m} | {k}×{n} | {:.3} ms | {:.3} ms ({tier}) | {:.3} ms ({}) | **{:.2}×** | {:.2}× | {:.2} |",
                dense * 1e3,
                t4 * 1e3,
                t24 * 1e3,
                s.tier(),
                dense / t24,
                t4 / t24,
                s.storage_bytes() as f64 / w.storage_bytes() as f64
            );
        }
    }
}

/// Median seconds of `f` over at least 3 runs and at least 0.5 s.
fn time(mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 3 || (start.elapsed().as_secs_f64() < 0.5 && t.len() < 50) {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Times our kernel on `w` at every activation precision this CPU offers for `m` rows.
fn ours(w: &QuantMatrix<'_>, x: &[f32], m: usize) -> Vec<(Tier, f64)> {
    let mut y = vec![0f32; m * w.out_features()];
    cases::tiers_to_time(w)
        .into_iter()
        .map(|tier| (tier, time(|| matmul_with(tier, x, m, w, &mut y).unwrap())))
        .collect()
}

fn main() {
    let args = Args::parse();
    let device = BackendKind::Flex.device().expect("flex is always compiled");
    println!(
        "{}, {} threads; tiers available: {}",
        cpu_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        Tier::ALL
            .iter()
            .filter(|t| t.is_available())
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if args.sparse24 {
        sparse24_table(&args.rows, &device);
        return;
    }
    let bandwidth = (!args.no_large).then(|| streaming_read(256 << 20, 10));
    if let Some(bw) = bandwidth {
        println!("streaming read, 256 MiB buffer: {:.1} GB/s", bw / 1e9);
    }
    println!();
    println!("| M | K×N | dense f32 (flex) | format | tier | time | speedup | weight GB/s |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, n) in cases::SHAPES {
        let wt = Tensor::<2>::from_data(TensorData::new(cases::values(k * n, 1), [k, n]), &device);
        let packed: Vec<_> = cases::FORMATS
            .iter()
            .map(|&f| (f, cases::packed(f, n, k, 2)))
            .collect();
        for &m in &args.rows {
            let x = cases::values(m * k, 3);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            let dense = time(|| {
                xt.clone().matmul(wt.clone()).into_data();
            });
            for (f, p) in &packed {
                let w = p.kernel_matrix().unwrap();
                for (tier, t) in ours(&w, &x, m) {
                    println!(
                        "| {m} | {k}×{n} | {:.3} ms | {} | {tier} | {:.3} ms | **{:.2}×** | {:.1} |",
                        dense * 1e3,
                        f.name,
                        t * 1e3,
                        dense / t,
                        w.storage_bytes() as f64 / t / 1e9
                    );
                }
            }
        }
    }
    bf16_table(&args.rows);
    if let Some(bw) = bandwidth {
        beyond_the_cache(bw, &device);
    }
}

/// Prefill-sized products (`M ≥ 8`) of the int8 GEMM against the dense bf16 product
/// (`compress_kernels::dense`, AMX or AVX-512 BF16: what bf16 calibration multiplies with) and
/// dense f32 (faer) on the same shapes, where the CPU has both VNNI and a bf16 path.
fn bf16_table(rows: &[usize]) {
    use compress::kernels::dense::{self, DensePrecision};
    if !Tier::Avx512Vnni.is_available() || !dense::bf16_available() {
        return;
    }
    println!();
    println!("| M | K×N | dense f32 (faer) | dense bf16 | format | int8 GEMM (avx512-vnni) | vs bf16 | int8 GEMM TOPS |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, n) in cases::SHAPES {
        let wd = cases::values(k * n, 1);
        let packed: Vec<_> = cases::FORMATS[..3]
            .iter()
            .map(|&f| (f, cases::packed(f, n, k, 2)))
            .collect();
        for &m in rows.iter().filter(|&&m| m >= 8) {
            let x = cases::values(m * k, 3);
            let mut y = vec![0f32; m * n];
            let mut run = |p| time(|| _ = dense::matmul(&x, m, &wd, n, k, &mut y, p).unwrap());
            let (f32_t, bf16_t) = (run(DensePrecision::F32), run(DensePrecision::Bf16));
            for (f, p) in &packed {
                let w = p.kernel_matrix().unwrap();
                let t = time(|| matmul_with(Tier::Avx512Vnni, &x, m, &w, &mut y).unwrap());
                println!(
                    "| {m} | {k}×{n} | {:.3} ms | {:.3} ms | {} | {:.3} ms | **{:.2}×** | {:.2} |",
                    f32_t * 1e3,
                    bf16_t * 1e3,
                    f.name,
                    t * 1e3,
                    bf16_t / t,
                    2.0 * (m * n * k) as f64 / t / 1e12
                );
            }
        }
    }
}

/// GEMV on weights larger than the last-level cache, against the streaming read. 16384 × 8192
/// int4 is 64 MiB of codes plus 8 MiB (g32) or 2–4 MiB (g128) of scales and zeros, twice the
/// LLC of the development machine, and is also timed against dense f32; 65536 × 8192 (256 MiB
/// of codes, the size of the streaming-read buffer) leaves no part of the weight in cache
/// between calls. The fraction of the streaming read is measured side by side
/// (`fraction_of_streaming`: eleven pairs of streaming-read and GEMV timings, median and range),
/// which a machine whose speed drifts needs.
fn beyond_the_cache(bw: f64, device: &burn::tensor::Device) {
    let k = 8192;
    for n in [16384, 65536] {
        let x = cases::values(k, 6);
        println!();
        let dense = (n == 16384).then(|| {
            let wt =
                Tensor::<2>::from_data(TensorData::new(cases::values(k * n, 1), [k, n]), device);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [1, k]), device);
            time(|| {
                xt.clone().matmul(wt.clone()).into_data();
            })
        });
        match dense {
            Some(d) => println!(
                "GEMV beyond the cache, {k}×{n}: dense f32 {:.2} ms ({:.1} GB/s of weights)",
                d * 1e3,
                (4 * k * n) as f64 / d / 1e9
            ),
            None => println!("GEMV beyond the cache, {k}×{n} (no dense f32: 2 GiB):"),
        }
        for f in &cases::FORMATS[1..] {
            let p = cases::packed(*f, n, k, 5);
            let w = p.kernel_matrix().unwrap();
            for (tier, t) in ours(&w, &x, 1) {
                let rate = w.storage_bytes() as f64 / t;
                let mut y = vec![0f32; n];
                let frac = fraction_of_streaming(w.storage_bytes(), 11, || {
                    matmul_with(tier, &x, 1, &w, &mut y).unwrap();
                });
                println!(
                    "  {} on {tier}: {:.2} ms, {:.1} GB/s = {:.0}% of the run's first streaming read; side by side {:.0}% (range {:.0}–{:.0}%){}",
                    f.name,
                    t * 1e3,
                    rate / 1e9,
                    100.0 * rate / bw,
                    100.0 * frac.median,
                    100.0 * frac.min,
                    100.0 * frac.max,
                    dense.map_or(String::new(), |d| format!("; {:.2}× dense", d / t)),
                );
            }
        }
    }
}
