//! Dense f32 matmul on the CPU backends (flex vs ndarray), at SmolLM2's shapes and a large square.
//!
//! ```text
//! cargo bench --bench matmul
//! ```
//! Throughput is reported in FLOPs (2·M·K·N per product), so criterion prints FLOP/s.

use burn::tensor::{Distribution, Tensor};
use compress::core::backend::BackendKind;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn matmul(c: &mut Criterion) {
    // (M, K, N): decode GEMV and 512-token prefill through SmolLM2's MLP, and 1024³.
    let shapes = [
        (1, 576, 1536),
        (512, 576, 1536),
        (512, 1536, 576),
        (1024, 1024, 1024),
    ];
    for kind in [BackendKind::Flex, BackendKind::NdArray] {
        let device = kind.device().unwrap();
        device.seed(0);
        let mut group = c.benchmark_group(format!("matmul/{kind}"));
        group.sample_size(10);
        for (m, k, n) in shapes {
            let a = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &device);
            let b = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 1.0), &device);
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            group.bench_function(format!("{m}x{k}x{n}"), |bench| {
                bench.iter(|| a.clone().matmul(b.clone()).into_data())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, matmul);
criterion_main!(benches);
