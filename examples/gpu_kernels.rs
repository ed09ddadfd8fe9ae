//! The CubeCL packed-matmul kernels on a GPU backend against burn's dense f32 matmul on the same
//! device, side by side in one run (what docs/performance.md quotes for GPUs), plus the device's
//! copy bandwidth and, given stories260K, a whole quantized model on the device.
//!
//! ```text
//! cargo run --release --example gpu_kernels -- --backend wgpu
//! CUDARC_CUDA_VERSION=13000 cargo run --release --features cuda --example gpu_kernels -- \
//!     --backend cuda --model ../shared/models/stories260K.gguf
//! ```
//! Each time is the median over repeats of a batch of back-to-back launches followed by one
//! device sync, divided by the batch size: throughput including launch overhead.

#[path = "common/kernel_cases.rs"]
mod cases;

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use clap::Parser;
use compress::core::backend::BackendKind;
use compress::core::linear::{CompressedLinear, QuantizedLinear};

#[derive(Parser, Debug)]
#[command(about = "CubeCL packed-matmul kernels vs dense f32 on a GPU backend")]
struct Args {
    /// Backend: wgpu or cuda.
    #[arg(long, default_value = "wgpu")]
    backend: BackendKind,
    /// Activation rows to measure (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = cases::ROWS)]
    rows: Vec<usize>,
    /// Only the two SmolLM2 shapes (for slow software devices such as lavapipe).
    #[arg(long)]
    small: bool,
    /// Launches per timed batch.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// stories260K GGUF: also run it dense and RTN-quantized on the device against flex.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// Median seconds per call of `f` (batches of `batch` calls, then a device sync and a read of
/// the last output's sum; 5 batches after a warm-up batch). Every output is kept alive until
/// then, so that no call's work can be dropped unexecuted.
fn time<const D: usize>(
    device: &Device,
    batch: usize,
    mut f: impl FnMut(usize) -> Tensor<D>,
) -> f64 {
    let mut run = || {
        let start = Instant::now();
        let outputs: Vec<Tensor<D>> = (0..batch).map(&mut f).collect();
        device.sync().unwrap();
        let last = outputs.last().expect("batch ≥ 1").clone();
        let _ = last.sum().into_data();
        start.elapsed().as_secs_f64() / batch as f64
    };
    run();
    let mut t: Vec<f64> = (0..5).map(|_| run()).collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

/// Two seconds of 1024³ matmuls, so that a GPU that idles at a low clock has ramped up before
/// anything is timed.
fn warm_up(device: &Device) {
    let a = Tensor::<2>::from_data(
        TensorData::new(cases::values(1 << 20, 3), [1024, 1024]),
        device,
    );
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < 2.0 {
        let _ = (0..10)
            .map(|_| a.clone().matmul(a.clone()))
            .collect::<Vec<_>>();
        device.sync().unwrap();
    }
}

/// Copy bandwidth of the device: `y = x + 1` over 2^25 f32 (128 MiB read, 128 MiB written:
/// one storage buffer of wgpu's default size limit, beyond a GPU's last-level cache).
fn bandwidth(device: &Device) -> f64 {
    let len = 1usize << 25;
    // From host data: a `Tensor::random` on wgpu measured implausibly fast here.
    let x = Tensor::<1>::from_data(TensorData::new(cases::values(len, 5), [len]), device);
    let s = time(device, 10, |_| x.clone() + 1.0);
    2.0 * 4.0 * len as f64 / s / 1e9
}

fn main() {
    let args = Args::parse();
    let device = match args.backend.device() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!("backend: {}", args.backend);
    warm_up(&device);
    let bw = bandwidth(&device);
    println!("device copy bandwidth: {bw:.0} GB/s (read + write)\n");

    let formats = [cases::FORMATS[1], cases::FORMATS[2], cases::FORMATS[0]];
    let shapes: &[(usize, usize)] = if args.small {
        &cases::SHAPES[..2]
    } else {
        &cases::SHAPES
    };
    println!(
        "| format | M | K×N | dense f32 | packed | speedup | weight bytes/s | max rel. diff |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for f in formats {
        for &(k, n) in shapes {
            let packed = cases::packed(f, n, k, 1);
            let w = Tensor::<2>::from_data(TensorData::new(packed.dequantize(), [n, k]), &device);
            let wt = w.transpose();
            let bytes = compress::kernels::device_layout::DeviceLayout::from_matrix(
                &packed.kernel_matrix().unwrap(),
            )
            .device_bytes();
            let layer = QuantizedLinear::new(packed, None, &device);
            assert!(
                layer.runs_device_kernel(),
                "{} runs the CubeCL kernels",
                f.name
            );
            let layer = CompressedLinear::Quantized(layer);
            for &m in &args.rows {
                let xs: Vec<Tensor<2>> = (0..3)
                    .map(|s| {
                        let v = cases::values(m * k, 10 + s);
                        Tensor::from_data(TensorData::new(v, [m, k]), &device)
                    })
                    .collect();
                let fused: Vec<f32> = layer
                    .forward(xs[0].clone())
                    .into_data()
                    .try_to_vec()
                    .unwrap();
                let dense: Vec<f32> = xs[0]
                    .clone()
                    .matmul(wt.clone())
                    .into_data()
                    .try_to_vec()
                    .unwrap();
                let scale = dense.iter().fold(0f32, |a, v| a.max(v.abs()));
                let diff = fused
                    .iter()
                    .zip(&dense)
                    .fold(0f32, |a, (p, q)| a.max((p - q).abs()))
                    / scale;
                let t_dense = time(&device, args.batch, |i| {
                    xs[i % 3].clone().matmul(wt.clone())
                });
                let t_packed = time(&device, args.batch, |i| layer.forward(xs[i % 3].clone()));
                println!(
                    "| {} | {m} | {k}×{n} | {:.1} µs | {:.1} µs | {:.2}× | {:.0} GB/s | {diff:.1e} |",
                    f.name,
                    t_dense * 1e6,
                    t_packed * 1e6,
                    t_dense / t_packed,
                    bytes as f64 / t_packed / 1e9,
                );
            }
        }
    }
    if let Some(path) = &args.model {
        model_check(path, &device, args.batch);
    }
}

/// stories260K on the device against flex: dense logits, then RTN int4 g32 with the CubeCL
/// kernels against the flex model's SIMD kernels, and decode speed with and without them.
fn model_check(path: &PathBuf, device: &Device, batch: usize) {
    use compress::core::packed::{QuantScheme, Symmetry};
    use compress::core::pipeline::{LayerFilter, Pipeline};
    use compress::quant::rtn::Rtn;
    let flex = BackendKind::Flex.device().unwrap();
    let cpu = compress::model::load(path, &flex).unwrap();
    let gpu = compress::model::load(path, device).unwrap();
    let ids = cpu
        .tokenizer
        .encode("Once upon a time, there was a little dog.", true)
        .unwrap();
    let logits = |m: &compress::model::LlamaModel| -> Vec<f32> {
        let d = m.device();
        let x = Tensor::<2, burn::tensor::Int>::from_data(
            TensorData::new(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [1, ids.len()],
            ),
            &d,
        );
        m.forward(x, None)
            .unwrap()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap()
    };
    let max_diff =
        |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    println!(
        "\nstories260K: dense on the device vs flex: max |Δlogit| {:.2e}",
        max_diff(&logits(&cpu.model), &logits(&gpu.model))
    );
    let scheme = QuantScheme::new(4, Some(32), Symmetry::Symmetric).unwrap();
    let quantize = |m: &compress::model::LlamaModel| {
        let mut q = m.clone();
        Pipeline::new()
            .step(LayerFilter::All, Rtn::new(scheme))
            .run(&mut q, &[], |_, _, _| {})
            .unwrap();
        q
    };
    let (qc, mut qg) = (quantize(&cpu.model), quantize(&gpu.model));
    println!(
        "RTN int4 g32: device kernels vs flex kernels: max |Δlogit| {:.2e}",
        max_diff(&logits(&qc), &logits(&qg))
    );
    let step = |m: &compress::model::LlamaModel| {
        let d = m.device();
        let mut cache = m.new_cache();
        let prefix = Tensor::<2, burn::tensor::Int>::from_data(
            TensorData::new(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [1, ids.len()],
            ),
            &d,
        );
        m.prefill(prefix, &mut cache).unwrap();
        let one =
            Tensor::<2, burn::tensor::Int>::from_data(TensorData::new(vec![1i64], [1, 1]), &d);
        time(&d, batch, |_| {
            m.forward_cached_last(one.clone(), &mut cache).unwrap()
        })
    };
    let fused = step(&qg);
    qg.set_kernels(None);
    let dequantized = step(&qg);
    println!(
        "decode step (batch of {batch} tokens through the KV cache): CubeCL kernels {:.0} µs, dequantized {:.0} µs",
        fused * 1e6,
        dequantized * 1e6
    );
}
