//! Helpers shared by the integration tests: locating the shared assets and comparing a model's
//! output with llama.cpp's reference output.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use compress_model::LlamaModel;

/// The workspace root (these helpers are also compiled into the root crate's tests).
pub fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if manifest.join("crates").is_dir() {
        manifest
    } else {
        manifest.join("../..")
    }
}

/// A file under `../shared` (beside the workspace), or `None` with a printed reason when it is
/// absent. Under `CI=true` an absent asset is a failure, never a skip.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let path = workspace().join("../shared").join(rel);
    asset(path, "the shared test assets (../shared)")
}

/// The SmolLM2-135M GGUF fetched by `scripts/fetch-models`, or `None` with a printed reason.
pub fn smollm2() -> Option<PathBuf> {
    let dir = std::env::var_os("COMPRESS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/models"));
    asset(
        dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "SmolLM2 (run scripts/fetch-models)",
    )
}

/// The Gemma 3 270M GGUF fetched by `scripts/fetch-models`, or `None` with a printed reason.
pub fn gemma3_270m() -> Option<PathBuf> {
    let dir = std::env::var_os("COMPRESS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/models"));
    asset(
        dir.join("gemma-3-270m-q4_k_m.gguf"),
        "Gemma 3 270M (run scripts/fetch-models)",
    )
}

fn asset(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    if under_ci() {
        panic!(
            "{} is missing under CI=true: {what} must be present",
            path.display()
        );
    }
    eprintln!("SKIPPED: {} not found ({what})", path.display());
    None
}

/// llama.cpp's output on a fixed input, as stored in `../shared/reference/*.json`.
pub struct Reference {
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load(rel: &str) -> Option<Self> {
        let path = shared(rel)?;
        let json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        Some(Self { json })
    }

    pub fn tokens(&self) -> Vec<u32> {
        self.json["tokens_first_65"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }

    /// `(position, top-5 ids, top-5 logits)` for each recorded position.
    pub fn top5(&self) -> Vec<(usize, Vec<u32>, Vec<f32>)> {
        self.json["top5_logits_positions_0_to_63"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let ids = p["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                let logits = p["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                (p["pos"].as_u64().unwrap() as usize, ids, logits)
            })
            .collect()
    }

    /// The mean NLL entry, whichever window length its key names.
    pub fn mean_nll(&self) -> f64 {
        let obj = self.json.as_object().unwrap();
        let (_, v) = obj.iter().find(|(k, _)| k.starts_with("mean_nll")).unwrap();
        v.as_f64().unwrap()
    }
}

/// Logits `[seq, vocab]` of one sequence, flattened row-major.
pub fn logits(model: &LlamaModel, ids: &[u32]) -> Vec<f32> {
    let device = model.device();
    let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &device);
    model
        .forward(x, None)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Top-5 ids of one row (ties to the lower id, as llama.cpp's sort does for distinct values).
pub fn top5(row: &[f32]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
    idx.truncate(5);
    idx
}

/// `ln softmax(row)[target]`, with an f64 accumulator.
pub fn log_prob(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + row
            .iter()
            .map(|&v| (v as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row[target as usize] as f64 - lse
}

/// Mean negative log-likelihood of `ids[1..]` given the logits of `ids[..n-1]`, accumulated in f64.
pub fn mean_nll(logits: &[f32], ids: &[u32], vocab: usize) -> f64 {
    let n = ids.len();
    let mut total = 0.0f64;
    for t in 0..n - 1 {
        total -= log_prob(&logits[t * vocab..(t + 1) * vocab], ids[t + 1]);
    }
    total / (n - 1) as f64
}

/// Largest element-wise |a − b| (the slices must have equal length).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "comparing slices of different lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// stories260K with the TinyStories validation text split at a line break near the middle: the
/// first half for calibration, the second for evaluation (never the same text twice).
pub struct StoriesSplit {
    pub m: compress_model::LoadedModel,
    pub calib: Vec<u32>,
    pub eval: Vec<u32>,
    pub eval_bytes: usize,
}

/// [`StoriesSplit`] on the flex backend, or `None` (with the reason printed) without the assets.
pub fn stories_split() -> Option<StoriesSplit> {
    let path = shared("models/stories260K.gguf")?;
    let text = std::fs::read_to_string(shared("data/tinystories/val.txt")?).unwrap();
    let device = compress_core::backend::BackendKind::Flex.device().unwrap();
    let m = compress_model::load(path, &device).unwrap();
    let (calib_text, eval_text) = compress_core::calibration::split_halves(&text);
    let calib = m.tokenizer.encode(calib_text, true).unwrap();
    let eval = m.tokenizer.encode(eval_text, true).unwrap();
    Some(StoriesSplit {
        m,
        calib,
        eval,
        eval_bytes: eval_text.len(),
    })
}

/// Runs `script` (tests/fixtures/gguf_py_dump.py) on the GGUF file at `path` and checks that
/// gguf-py sees what our reader sees: the same tensors with the same types and shapes, the same
/// dequantized values bit for bit (both follow ggml's `dequantize_row_*`), and the
/// hyper-parameter keys llama.cpp needs. Panics with the first difference.
pub fn compare_with_gguf_py(script: &std::path::Path, path: &std::path::Path) {
    use compress_model::gguf::GgufFile;
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(path)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "gguf-py failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gguf-py JSON");
    let file = GgufFile::open(path).unwrap();
    let arch = file.get_str("general.architecture").unwrap().to_string();
    for key in [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
    ] {
        let k = format!("{arch}.{key}");
        assert_eq!(
            dump["metadata"][&k].as_u64(),
            Some(file.get_u64(&k).unwrap()),
            "gguf-py reads {k} differently"
        );
    }
    let tensors = dump["tensors"].as_object().expect("tensors");
    assert_eq!(tensors.len(), file.tensors().len(), "tensor count");
    for info in file.tensors() {
        let t = &tensors[info.name()];
        assert_eq!(
            t["type"].as_str(),
            Some(info.ggml_type().name()),
            "{}",
            info.name()
        );
        let shape: Vec<u64> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(shape, info.shape_row_major(), "{} shape", info.name());
        let theirs: Vec<u32> = f32_from_hex(t["f32_hex"].as_str().unwrap())
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let ours: Vec<u32> = file
            .dequantize(info.name())
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert!(
            theirs == ours,
            "{}: gguf-py dequantizes different values",
            info.name()
        );
    }
}

/// Little-endian f32 values from their bytes in hex (how the Python reference scripts dump
/// arrays without losing a bit).
pub fn f32_from_hex(hex: &str) -> Vec<f32> {
    hex.as_bytes()
        .chunks_exact(8)
        .map(|c| {
            let b: Vec<u8> = c
                .chunks_exact(2)
                .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
                .collect();
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
        .collect()
}

/// The statistics of block 1's stage `stage` inputs, accumulated as the pipeline does over 16
/// seeded windows of 128 calibration tokens: real activations (after embedding and a full block
/// 0), for the layer-level comparisons of the method crates' tests.
pub fn block1_stats(
    s: &StoriesSplit,
    stage: usize,
    request: compress_core::compressor::StatsRequest,
) -> compress_core::compressor::LayerStats {
    use compress_core::pipeline::{collect_stats, BlockWalk, Pipeline};
    let model = &s.m.model;
    let device = BlockWalk::device(model);
    let windows = compress_core::calibration::sample_windows(&s.calib, 16, 128, 0).unwrap();
    let xs = Pipeline::new()
        .embed_calibration(model, &windows, &device)
        .unwrap();
    let mut caches: Vec<_> = xs
        .into_iter()
        .map(|x| model.begin_block(1, model.block_forward(0, x), &Default::default()))
        .collect();
    collect_stats(model, 1, stage, &mut caches, request).unwrap()
}

/// Whether `python3 -c "import {modules}"` succeeds. When it does not: a failure if `required`
/// (naming `how` to install them), otherwise `false` with the reason printed (a skip).
pub fn python_has(modules: &str, required: bool, how: &str) -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !required,
            "python3 with `{modules}` is required here ({how})"
        );
        eprintln!("SKIPPED: python3 -c 'import {modules}' failed ({how})");
    }
    ok
}

/// Whether `CI=true` is set (assets and reference tools must then be present).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Every family with a transformers-made fixture (`crates/compress-model/tests/fixtures/families`,
/// `scripts/family-fixtures/`): the dense ones, then the mixtures of experts.
pub const FAMILIES: &[&str] = &[
    "llama3",
    "qwen2",
    "mistral",
    "qwen3",
    "gemma2",
    "gemma3",
    "phi3",
    "phi4mini",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
];

/// The mixture-of-experts families among [`FAMILIES`].
pub const MOE: &[&str] = &["mixtral", "qwen2_moe", "qwen3_moe"];

/// The fixture directory of family `name`.
pub fn family_fixture(name: &str) -> PathBuf {
    workspace()
        .join("crates/compress-model/tests/fixtures/families")
        .join(name)
}

/// A JSON array of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of token ids")
        .iter()
        .map(|x| x.as_u64().expect("a token id") as u32)
        .collect()
}
