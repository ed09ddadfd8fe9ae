//! A stories260K compressed with every kind of layer storage — packed 4-bit symmetric and
//! asymmetric codes, 8-bit codes, groups with a ragged last group, a 2:4 mask on dense
//! weights, a 2:4 mask on packed codes, a low-rank factorization — saved and loaded back:
//!
//! - the container restores every layer bit for bit (codes, scales, zeros, masks, factors)
//!   and the model gives the same logits bit for bit;
//! - GGUF export writes each ggml-compatible layer in its block format (Q4_0, Q4_1, Q8_0; the
//!   pruned symmetric one as Q4_0 with exact zeros), refuses the rest (the low-rank layer; the
//!   172-wide down projections, whose rows are not whole blocks of 32) unless dense fallback is
//!   asked for, and the reloaded model matches within the reported conversion error;
//! - gguf-py reads the exported file with the same values (required under `CI=true`).

#[path = "../crates/compress-model/tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::{logits, max_abs_diff, stories_split};
use compress::core::calibration::sample_windows;
use compress::core::layer_id::{LinearId, LinearKind};
use compress::core::linear::{CompressedLinear, LowRankLinear};
use compress::core::pipeline::BlockwiseModel;
use compress::model::container::{read_container, write_container};
use compress::model::gguf::{GgmlType, GgufFile};
use compress::model::llama::BLOCK_LINEARS;
use compress::model::save::{write_gguf, GgufExport};
use compress::model::LoadedModel;
use compress::recipe::Recipe;

const RECIPE: &str = r#"
version = 1
[calibration]
nsamples = 8
seqlen = 64
seed = 0

[[step]]
method = "rtn"
bits = 4
group = 32
layers = "attn\\.q_proj$"

[[step]]
method = "gptq"
bits = 8
group = 32
layers = "attn\\.k_proj$"

[[step]]
method = "rtn"
bits = 4
group = 32
symmetric = false
layers = "attn\\.v_proj$"

[[step]]
method = "sparsegpt"
nm = "2:4"
quantize = { bits = 4, group = 32 }
layers = "mlp\\.gate_proj$"

[[step]]
method = "sparsegpt"
nm = "2:4"
layers = "mlp\\.up_proj$"

[[step]]
method = "rtn"
bits = 4
group = 32
layers = "mlp\\.down_proj$"
"#;

/// stories260K after [`RECIPE`], with block 0's o_proj replaced by a rank-8 factorization
/// (`U` = its first 8 columns, `V` = the first 8 rows of block 1's o_proj: real values; the
/// test is about storage, not quality — low-rank methods are issue #7's).
fn compressed() -> Option<(LoadedModel, Vec<u32>)> {
    let s = stories_split()?;
    let mut m = s.m;
    let recipe = Recipe::from_toml(RECIPE).unwrap();
    let c = recipe.calibration.clone();
    let windows = sample_windows(&s.calib, c.nsamples, c.seqlen, c.seed).unwrap();
    recipe
        .pipeline()
        .unwrap()
        .run(&mut m.model, &windows, |_, _, _| {})
        .unwrap();
    let o0 = m
        .model
        .expect_linear(LinearId::block(0, LinearKind::O))
        .dense_weight();
    let o1 = m
        .model
        .expect_linear(LinearId::block(1, LinearKind::O))
        .dense_weight();
    let [out, inp] = o0.dims();
    let up = o0.slice([0..out, 0..8]);
    let down = o1.slice([0..8, 0..inp]);
    *m.model.expect_linear_mut(LinearId::block(0, LinearKind::O)) =
        CompressedLinear::LowRank(LowRankLinear::new(up, down, None));
    let ids = m
        .tokenizer
        .encode("Once upon a time, there was a girl", true)
        .unwrap();
    Some((m, ids))
}

#[test]
fn container_restores_every_layer_kind_bit_for_bit() {
    let Some((m, ids)) = compressed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let header = write_container(&m.model, &m.tokenizer, &path, &Default::default()).unwrap();
    let entries: Vec<String> = header.layers.values().map(|e| format!("{e:?}")).collect();
    for want in ["LowRank", "symmetric: false", "bits: 8", "mask: true"] {
        assert!(
            entries.iter().any(|e| e.contains(want)),
            "no layer stored as {want}"
        );
    }
    let device = m.model.device();
    let back = read_container(&path, &device).unwrap();
    for l in 0..m.model.num_blocks() {
        for name in BLOCK_LINEARS.map(|k| LinearId::block(l, k)) {
            let (a, b) = (m.model.expect_linear(name), back.model.expect_linear(name));
            let what = format!("layers.{l}.{name}");
            match (a, b) {
                (CompressedLinear::Quantized(a), CompressedLinear::Quantized(b)) => {
                    assert_eq!(a.packed, b.packed, "{what}: codes, scales, zeros and mask")
                }
                (CompressedLinear::Dense(a), CompressedLinear::Dense(b)) => {
                    assert_eq!(a.mask, b.mask, "{what}: mask")
                }
                (CompressedLinear::LowRank(a), CompressedLinear::LowRank(b)) => {
                    assert_eq!(a.rank(), b.rank(), "{what}")
                }
                _ => panic!("{what}: stored as a different kind"),
            }
            let (wa, wb) = (a.dense_weight(), b.dense_weight());
            assert_eq!(
                wa.into_data().try_to_vec::<f32>().unwrap(),
                wb.into_data().try_to_vec::<f32>().unwrap(),
                "{what}: weights"
            );
        }
    }
    assert_eq!(logits(&back.model, &ids), logits(&m.model, &ids));
    let again = dir.path().join("again.safetensors");
    write_container(&back.model, &back.tokenizer, &again, &Default::default()).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&again).unwrap()
    );
}

#[test]
fn gguf_export_uses_block_formats_and_reports_fallbacks() {
    let Some((m, ids)) = compressed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.gguf");
    // The low-rank layer has no ggml form: refused by default, naming it.
    let e = write_gguf(&m.model, &m.tokenizer, &path, &GgufExport::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_output.weight") && e.contains("rank-8"),
        "{e}"
    );
    assert!(!path.exists());

    let options = GgufExport {
        fallback_dense: true,
        ..GgufExport::default()
    };
    let report = write_gguf(&m.model, &m.tokenizer, &path, &options).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let ty = |n: &str| file.tensor(n).unwrap().ggml_type();
    for l in 0..m.model.num_blocks() {
        assert_eq!(ty(&format!("blk.{l}.attn_q.weight")), GgmlType::Q4_0);
        assert_eq!(ty(&format!("blk.{l}.attn_k.weight")), GgmlType::Q8_0);
        assert_eq!(ty(&format!("blk.{l}.attn_v.weight")), GgmlType::Q4_1);
        assert_eq!(
            ty(&format!("blk.{l}.ffn_gate.weight")),
            GgmlType::Q4_0,
            "pruned + 4-bit"
        );
        assert_eq!(
            ty(&format!("blk.{l}.ffn_up.weight")),
            GgmlType::F32,
            "pruned dense"
        );
        // stories260K's FFN is 172 wide: down_proj rows are not whole blocks of 32.
        assert_eq!(ty(&format!("blk.{l}.ffn_down.weight")), GgmlType::F32);
    }
    let fallbacks: Vec<&str> = report
        .tensors
        .iter()
        .filter(|t| t.fallback.is_some())
        .map(|t| t.name.as_str())
        .collect();
    let mut want = vec!["blk.0.attn_output.weight".to_string()];
    want.extend((0..m.model.num_blocks()).map(|l| format!("blk.{l}.ffn_down.weight")));
    want.sort();
    let mut fallbacks: Vec<String> = fallbacks.iter().map(|s| s.to_string()).collect();
    fallbacks.sort();
    assert_eq!(fallbacks, want);
    let reason = |n: &str| {
        report
            .tensors
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .fallback
            .clone()
            .unwrap()
    };
    assert!(
        reason("blk.1.ffn_down.weight").contains("172"),
        "{}",
        reason("blk.1.ffn_down.weight")
    );
    assert_eq!(file.get_u32("general.file_type").unwrap(), 2, "mostly Q4_0");

    let back = compress::model::load(&path, &m.model.device()).unwrap();
    // Every layer but the Q4_1 ones is bit-exact; Q4_1 moves weights by at most the reported
    // rounding of m = −d·z. Logits (magnitude ~10) move by far less than the 0.05 bound here.
    let worst_weight = report
        .tensors
        .iter()
        .filter(|t| t.ty == GgmlType::Q4_1)
        .map(|t| t.max_abs_error)
        .fold(0.0f32, f32::max);
    assert!(worst_weight > 0.0 && worst_weight < 1e-3, "{worst_weight}");
    for l in 0..m.model.num_blocks() {
        for kind in [
            LinearKind::Q,
            LinearKind::K,
            LinearKind::Gate,
            LinearKind::Up,
            LinearKind::Down,
        ] {
            let name = LinearId::block(l, kind);
            let a = m
                .model
                .expect_linear(name)
                .dense_weight()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let b = back
                .model
                .expect_linear(name)
                .dense_weight()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_eq!(a, b, "{name} must survive GGUF exactly");
        }
    }
    let d = max_abs_diff(&logits(&back.model, &ids), &logits(&m.model, &ids));
    assert!(d < 0.05, "max |Δlogit| {d}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/compress-model/tests/fixtures/gguf_py_dump.py");
    if common::python_has(
        "gguf, numpy",
        common::under_ci(),
        ".ci/run installs gguf-py",
    ) {
        common::compare_with_gguf_py(&script, &path);
    }
}

/// Interleaved (GGUF) q/k rows → NeoX (Hugging Face) rows, head by head: NeoX row `i` is
/// interleaved row `2i`, NeoX row `hd/2 + i` is interleaved row `2i + 1` (written here
/// independently of the exporter's own permutation).
fn to_neox(w: &[f32], rows: usize, cols: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for h in 0..rows / hd {
        for i in 0..hd / 2 {
            for (src, dst) in [(2 * i, i), (2 * i + 1, hd / 2 + i)] {
                let (s, d) = ((h * hd + src) * cols, (h * hd + dst) * cols);
                out[d..d + cols].copy_from_slice(&w[s..s + cols]);
            }
        }
    }
    out
}

/// compressed-tensors (pack-quantized): every layer the format expresses is written from its
/// codes, the rest is refused with the reason or written dense on request, and the
/// compressed-tensors package decompresses the same weights (up to the one f16 rounding of
/// `(q − zp)·scale` it does in the scale dtype). Required under `CI=true` only when the
/// package is installed by CI (see .ci/run); otherwise skipped with the reason.
#[test]
fn compressed_tensors_export_decompresses_to_our_weights() {
    use compress::model::save::{write_compressed_tensors, CompressedTensorsExport};
    let Some((m, _)) = compressed() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ct");
    let e = write_compressed_tensors(&m.model, &m.tokenizer, &out, &Default::default())
        .unwrap_err()
        .to_string();
    // This project's asymmetric grids keep fractional f16 zero points; the format stores
    // integers, so v_proj (RTN 4-bit asymmetric) cannot be written exactly.
    assert!(
        e.contains("model.layers.0.self_attn.v_proj") && e.contains("not an integer"),
        "{e}"
    );
    assert!(!out.exists());
    let options = CompressedTensorsExport {
        fallback_dense: true,
        ..Default::default()
    };
    let report = write_compressed_tensors(&m.model, &m.tokenizer, &out, &options).unwrap();
    // q (4-bit sym g32) and gate (the same scheme, 2:4-pruned) share a config group, k (8-bit)
    // has its own; v (fractional zeros), down (172-wide rows are not whole groups of 32) and
    // block 0's low-rank o_proj are written dense, each with its reason.
    assert_eq!(report.config_groups, 2);
    assert_eq!(report.quantized.len(), 3 * 5, "{:?}", report.quantized);
    let why: Vec<&str> = report
        .dense
        .iter()
        .filter_map(|(_, w)| w.as_deref())
        .collect();
    assert_eq!(
        why.iter().filter(|w| w.contains("172")).count(),
        5,
        "{why:?}"
    );
    assert_eq!(
        why.iter().filter(|w| w.contains("not an integer")).count(),
        5,
        "{why:?}"
    );
    assert_eq!(
        why.iter().filter(|w| w.contains("rank-8")).count(),
        1,
        "{why:?}"
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/compress-model/tests/fixtures/ct_decompress.py");
    let required = std::env::var("COMPRESS_REQUIRE_COMPRESSED_TENSORS").is_ok_and(|v| v == "1");
    if !common::python_has(
        "compressed_tensors, torch",
        required,
        "COMPRESS_REQUIRE_COMPRESSED_TENSORS=1 is set by .ci/run, which installs it",
    ) {
        return;
    }
    let o = std::process::Command::new("python3")
        .arg(&script)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dump: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(dump["groups"], 2);
    let hd = m.model.config().head_dim;
    let mut checked = 0;
    for l in 0..m.model.num_blocks() {
        for (kind, hf) in [
            (LinearKind::Q, "self_attn.q_proj"),
            (LinearKind::K, "self_attn.k_proj"),
            (LinearKind::Gate, "mlp.gate_proj"),
        ] {
            let lin = m.model.expect_linear(LinearId::block(l, kind));
            let (rows, cols) = (lin.out_features(), lin.in_features());
            let mut ours = lin.dense_weight().into_data().try_to_vec::<f32>().unwrap();
            if kind.is_rotated() {
                ours = to_neox(&ours, rows, cols, hd);
            }
            let module = &dump["modules"][format!("model.layers.{l}.{hf}")];
            let theirs =
                common::f32_from_hex(module["f32_hex"].as_str().expect("module decompressed"));
            assert_eq!(theirs.len(), ours.len());
            for (i, (a, b)) in theirs.iter().zip(&ours).enumerate() {
                // One f16 rounding: half an ulp, 2^-11 relative (f16 normals).
                assert!(
                    (a - b).abs() <= b.abs() * 2f32.powi(-11) + 1e-7,
                    "layers.{l}.{hf}[{i}]: compressed-tensors {a}, ours {b}"
                );
                if *b == 0.0 {
                    assert_eq!(*a, 0.0, "pruned weights stay exactly 0");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 15);

    // transformers loads the directory (decompressing it) and computes the same logits, up to
    // the f16 storage of the dense tensors: f16 rounding of every dense weight moves logits of
    // magnitude ~10 by a few hundredths (see crates/compress-model/tests/hf_checkpoint.rs).
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/compress-model/tests/fixtures/hf_logits.py");
    let (_, ids) = compressed().unwrap();
    let o = std::process::Command::new("python3")
        .arg(&script)
        .arg(&out)
        .arg(serde_json::to_string(&ids).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: Vec<Vec<f32>> = serde_json::from_slice(&o.stdout).unwrap();
    let ours = logits(&m.model, &ids);
    let vocab = m.model.config().vocab_size;
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap();
    let mut worst = 0f32;
    for (t, row) in theirs.iter().enumerate() {
        let mine = &ours[t * vocab..(t + 1) * vocab];
        let d = max_abs_diff(row, mine);
        worst = worst.max(d);
        assert!(
            d < 0.1,
            "position {t}: max |Δlogit| {d} between transformers and compress"
        );
        assert_eq!(argmax(row), argmax(mine), "position {t}: top token");
    }
    eprintln!(
        "transformers vs compress on {} positions: max |Δlogit| {worst}",
        theirs.len()
    );
    // Our loader reads the export back — packed symmetric and asymmetric groups (zero points
    // unpacked along the output dimension), the dense fallback — with transformers' logits:
    // both dequantize the same codes and f16 tensors.
    let back = compress::model::load(&out, &m.model.device()).unwrap();
    let reread = logits(&back.model, &ids);
    let flat: Vec<f32> = theirs.concat();
    let d = max_abs_diff(&reread, &flat);
    eprintln!("our reader vs transformers on the export: max |Δlogit| {d}");
    assert!(d < 1e-3, "our reader vs transformers: {d}");
}
