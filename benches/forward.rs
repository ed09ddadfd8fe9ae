//! Forward-pass throughput of SmolLM2-135M (fetched by `scripts/fetch-models`) on the CPU
//! backends: prefill of a 512-token WikiText-2 prompt (logits for every position, as perplexity
//! needs; and only the last one, as generation needs), and one decode step after it.
//!
//! ```text
//! cargo bench --bench forward
//! ```
//! Throughput is reported as elements = tokens, so criterion prints tokens/s.

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use compress::core::backend::BackendKind;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn smollm2() -> Option<PathBuf> {
    let dir = std::env::var_os("COMPRESS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/models"));
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    path.exists().then_some(path)
}

fn forward(c: &mut Criterion) {
    let Some(path) = smollm2() else {
        eprintln!("SKIPPED: SmolLM2 not found; run scripts/fetch-models");
        return;
    };
    let text_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/wikitext-2/wiki.test.raw");
    let text =
        std::fs::read_to_string(&text_path).unwrap_or_else(|_| "The quick brown fox. ".repeat(400));
    const PROMPT: usize = 512;
    for kind in [BackendKind::Flex, BackendKind::NdArray] {
        let device = kind.device().unwrap();
        let m = compress::model::load(&path, &device).unwrap();
        let ids: Vec<i64> = m.tokenizer.encode(&text[..8000], true).unwrap()[..PROMPT]
            .iter()
            .map(|&t| t as i64)
            .collect();
        let prompt = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, PROMPT]), &device);

        let mut group = c.benchmark_group(format!("smollm2_135m/{kind}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(PROMPT as u64));
        group.bench_function("prefill_512", |b| {
            b.iter(|| {
                let mut cache = m.model.new_cache();
                let logits = m.model.forward_cached(prompt.clone(), &mut cache).unwrap();
                logits.narrow(1, PROMPT - 1, 1).into_data()
            })
        });
        // What generation runs: the output head only for the last prompt position.
        group.bench_function("prefill_512_last_logits", |b| {
            b.iter(|| {
                let mut cache = m.model.new_cache();
                m.model
                    .forward_cached_last(prompt.clone(), &mut cache)
                    .unwrap()
                    .into_data()
            })
        });
        let mut cache = m.model.new_cache();
        m.model
            .forward_cached(prompt.clone(), &mut cache)
            .unwrap()
            .into_data();
        let next = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64], [1, 1]), &device);
        group.throughput(Throughput::Elements(1));
        group.bench_function("decode_after_512", |b| {
            b.iter_batched(
                || cache.clone(),
                |mut cache| {
                    m.model
                        .forward_cached(next.clone(), &mut cache)
                        .unwrap()
                        .into_data()
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, forward);
criterion_main!(benches);
