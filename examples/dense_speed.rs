//! Dense products of calibration size on the CPU, side by side in one run: burn-flex's f32
//! matmul (what a dense layer and the pipeline's `XᵀX` used before), faer's f32 GEMM and bf16
//! on AMX tiles or AVX-512 BF16 (`compress_kernels::dense`, whichever the CPU has), for
//! SmolLM2-135M's projections and Gram matrices.
//!
//! ```text
//! cargo run --release --example dense_speed             # 4096 rows (8 windows of 512 tokens)
//! cargo run --release --example dense_speed -- --rows 512
//! ```
//! Each time is the median of 5 runs after a warm-up; GFLOP/s count `2·M·N·K` (and `2·T·d²` for
//! a Gram matrix, although the bf16 path multiplies only its upper block triangle).

#[path = "common/kernel_cases.rs"]
mod cases;

use std::time::Instant;

use burn::tensor::{Tensor, TensorData};
use clap::Parser;
use compress::core::backend::BackendKind;
use compress::kernels::dense::{self, DensePrecision};

#[derive(Parser, Debug)]
#[command(
    about = "Dense f32 (burn-flex, faer) vs bf16 (AMX / AVX-512 BF16) products of calibration size"
)]
struct Args {
    /// Activation rows (tokens) per product.
    #[arg(long, default_value_t = 4096)]
    rows: usize,
}

fn median(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

fn main() {
    let args = Args::parse();
    let m = args.rows;
    let device = BackendKind::Flex.device().unwrap();
    println!(
        "bf16 products run on {:?}\n",
        dense::path_for(DensePrecision::Bf16)
    );
    println!(
        "| product | M×K·(N×K)ᵀ | burn-flex f32 | faer f32 | bf16 | bf16 vs flex | bf16 vs faer |"
    );
    println!("|---|---|---|---|---|---|---|");
    let gflops = |flop: f64, s: f64| flop / s / 1e9;
    // SmolLM2-135M: q/o (576→576), k/v (576→192), gate/up (576→1536), down (1536→576).
    for (name, k, n) in [
        ("q/o proj", 576, 576),
        ("k/v proj", 576, 192),
        ("gate/up proj", 576, 1536),
        ("down proj", 1536, 576),
    ] {
        let x = cases::values(m * k, 1);
        let w = cases::values(n * k, 2);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [n, k]), &device).transpose();
        let flop = 2.0 * (m * n * k) as f64;
        let flex = median(|| {
            let _ = xt.clone().matmul(wt.clone()).into_data();
        });
        let mut y = vec![0f32; m * n];
        let faer = median(|| {
            dense::matmul(&x, m, &w, n, k, &mut y, DensePrecision::F32).unwrap();
        });
        let amx = median(|| {
            dense::matmul(&x, m, &w, n, k, &mut y, DensePrecision::Bf16).unwrap();
        });
        println!(
            "| {name} | {m}×{k}·({n}×{k})ᵀ | {:.0} GFLOP/s | {:.0} GFLOP/s | {:.0} GFLOP/s | {:.1}× | {:.1}× |",
            gflops(flop, flex),
            gflops(flop, faer),
            gflops(flop, amx),
            flex / amx,
            faer / amx
        );
    }
    for d in [576usize, 1536] {
        let x = cases::values(m * d, 3);
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, d]), &device);
        let flop = 2.0 * (m * d * d) as f64;
        let flex = median(|| {
            let _ = xt.clone().transpose().matmul(xt.clone()).into_data();
        });
        let mut g = vec![0f32; d * d];
        let faer = median(|| {
            dense::gram(&x, m, d, &mut g, DensePrecision::F32).unwrap();
        });
        let amx = median(|| {
            dense::gram(&x, m, d, &mut g, DensePrecision::Bf16).unwrap();
        });
        println!(
            "| Gram XᵀX | {m}×{d} | {:.0} GFLOP/s | {:.0} GFLOP/s | {:.0} GFLOP/s | {:.1}× | {:.1}× |",
            gflops(flop, flex),
            gflops(flop, faer),
            gflops(flop, amx),
            flex / amx,
            faer / amx
        );
    }
}
