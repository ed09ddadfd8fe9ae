//! Fused low-bit matmul (compress-kernels) against burn's dense f32 matmul on the same CPU
//! backend (flex), for the issue's shapes and M = 1, 16, 512.
//!
//! ```text
//! cargo bench --bench kernels              # everything (about 15 minutes on 2 cores)
//! cargo bench --bench kernels -- 'm1/'     # decode GEMV only
//! ```
//! Throughput is the weight's stored bytes, so criterion prints effective weight bytes/s; the
//! `kernel_speed` example prints the same comparisons as a table of ratios.

#[path = "../examples/common/kernel_cases.rs"]
mod cases;

use std::time::Duration;

use burn::tensor::{Tensor, TensorData};
use compress::core::backend::BackendKind;
use compress::kernels::matmul_with;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn kernels(c: &mut Criterion) {
    let device = BackendKind::Flex.device().unwrap();
    for (k, n) in cases::SHAPES {
        let dense_w: Vec<f32> = cases::values(k * n, 1);
        let wt = Tensor::<2>::from_data(TensorData::new(dense_w, [k, n]), &device);
        let packed: Vec<_> = cases::FORMATS
            .iter()
            .map(|&f| (f, cases::packed(f, n, k, 2)))
            .collect();
        for m in cases::ROWS {
            let x = cases::values(m * k, 3);
            let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            let mut group = c.benchmark_group(format!("m{m}/{k}x{n}"));
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            group.throughput(Throughput::Bytes((4 * k * n) as u64));
            group.bench_function("dense-f32-flex", |b| {
                b.iter(|| xt.clone().matmul(wt.clone()).into_data())
            });
            for (f, p) in &packed {
                let w = p.kernel_matrix().unwrap();
                let mut y = vec![0f32; m * n];
                group.throughput(Throughput::Bytes(w.storage_bytes() as u64));
                for tier in cases::tiers_to_time(&w) {
                    group.bench_function(format!("{}-{tier}", f.name), |b| {
                        b.iter(|| matmul_with(tier, &x, m, &w, &mut y).unwrap())
                    });
                }
            }
            // The int4 g32 codes in the 2:4-sparse layout (kept codes and positions only).
            let (f, p) = &packed[1];
            assert_eq!(f.name, "int4-g32");
            let s = cases::sparse24(p, 7);
            let mut y = vec![0f32; m * n];
            group.throughput(Throughput::Bytes(s.storage_bytes() as u64));
            group.bench_function(format!("int4-g32-2:4-{}", s.tier()), |b| {
                b.iter(|| compress::kernels::sparse24::matmul(&x, m, &s, &mut y).unwrap())
            });
            group.finish();
        }
    }
}

criterion_group!(benches, kernels);
criterion_main!(benches);
