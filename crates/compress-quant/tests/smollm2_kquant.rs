//! k-quant export on the real SmolLM2-135M: RTN fitted to Q4_K and Q6_K super-blocks, written as
//! GGUF, read back by our reader (itself bit-exact with ggml's dequantization) and by gguf-py.
//!
//! SmolLM2's `down_proj` rows are 1536 = 6 × 256 weights, so they can be k-quants; every other
//! projection reads 576 = 2.25 × 256 features, so a Q4_K-fitted `q_proj` falls back to Q4_1 with
//! the same codes (llama.cpp's own fallback for such tensors).

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use std::path::Path;

use compress_core::backend::BackendKind;
use compress_core::kquant::KQuant;
use compress_core::layer_id::{LinearId, LinearKind};
use compress_core::linear::CompressedLinear;
use compress_core::pipeline::BlockwiseModel;
use compress_model::generate::{generate, GenerateOptions, Sampling};
use compress_model::gguf::{GgmlType, GgufFile};
use compress_model::save::{write_gguf, GgufExport};
use compress_quant::grid::GridConfig;
use compress_quant::rtn::Rtn;

fn k_rtn(format: KQuant) -> Rtn {
    Rtn {
        grid: GridConfig {
            k_quant: Some(format),
            ..GridConfig::default()
        },
        ..Rtn::new(format.scheme())
    }
}

#[test]
fn k_quant_layers_export_as_k_quants_read_back_exactly() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let device = BackendKind::Flex.device().unwrap();
    let mut m = compress_model::load(path, &device).unwrap();
    let blocks = m.model.num_blocks();
    // Even blocks' down_proj as Q4_K, odd blocks' as Q6_K; block 0's q_proj Q4_K-fitted.
    for b in 0..blocks {
        let format = if b % 2 == 0 { KQuant::Q4K } else { KQuant::Q6K };
        let name = format!("blocks.{b}.mlp.down_proj");
        let q = k_rtn(format)
            .quantize_linear(
                &name,
                m.model.expect_linear(LinearId::block(b, LinearKind::Down)),
                &device,
            )
            .unwrap();
        *m.model
            .expect_linear_mut(LinearId::block(b, LinearKind::Down)) = q;
    }
    let q = k_rtn(KQuant::Q4K)
        .quantize_linear(
            "q",
            m.model.expect_linear(LinearId::block(0, LinearKind::Q)),
            &device,
        )
        .unwrap();
    *m.model.expect_linear_mut(LinearId::block(0, LinearKind::Q)) = q;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.gguf");
    let options = GgufExport {
        dense: GgmlType::F16,
        ..GgufExport::default()
    };
    let report = write_gguf(&m.model, &m.tokenizer, &out, &options).unwrap();
    let file = GgufFile::open(&out).unwrap();
    let ty = |n: &str| file.tensor(n).unwrap().ggml_type();
    assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(ty("blk.1.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.0.attn_q.weight"), GgmlType::Q4_1);

    // Values: the GGUF tensors against the packed layers they came from.
    let mut worst_q4k = 0f32;
    for b in 0..blocks {
        let CompressedLinear::Quantized(q) =
            m.model.expect_linear(LinearId::block(b, LinearKind::Down))
        else {
            panic!("block {b}: down_proj is not quantized");
        };
        let want = q.packed.dequantize();
        let name = format!("blk.{b}.ffn_down.weight");
        let got = file.dequantize(&name).unwrap();
        let worst = common::max_abs_diff(&got, &want);
        let written = report.tensors.iter().find(|t| t.name == name).unwrap();
        assert_eq!(
            written.max_abs_error, worst,
            "{name}: the report is the measurement"
        );
        if b % 2 == 1 {
            assert_eq!(
                got, want,
                "{name}: Q6_K must hold the packed weights bit for bit"
            );
        } else {
            // Only the zero points' f16 rounding: half an ulp (≤ 2⁻⁸ for z < 16) of a step.
            let max_scale = (0..q.packed.shape()[0])
                .flat_map(|r| (0..1536).step_by(32).map(move |c| (r, c)))
                .map(|(r, c)| q.packed.scale_zero(r, c).0)
                .fold(0f32, f32::max);
            assert!(
                worst <= max_scale / 256.0,
                "{name}: {worst} vs step {max_scale}"
            );
            worst_q4k = worst_q4k.max(worst);
        }
    }
    eprintln!("Q4_K tensors: largest deviation from the packed weights {worst_q4k:.3e}");

    // gguf-py (llama.cpp's reader) dequantizes the k-quant tensors to the same values.
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../compress-model/tests/fixtures/gguf_py_dump.py");
    if common::python_has(
        "gguf, numpy",
        common::under_ci(),
        ".ci/run installs gguf-py",
    ) {
        let o = std::process::Command::new("python3")
            .arg(&script)
            .arg(&out)
            .arg(r"^blk\.[01]\.ffn_down\.weight$")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let dump: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for (name, ty) in [
            ("blk.0.ffn_down.weight", "Q4_K"),
            ("blk.1.ffn_down.weight", "Q6_K"),
        ] {
            let t = &dump["tensors"][name];
            assert_eq!(t["type"].as_str(), Some(ty));
            let py = common::f32_from_hex(t["f32_hex"].as_str().unwrap());
            assert_eq!(
                py,
                file.dequantize(name).unwrap(),
                "{name}: gguf-py disagrees"
            );
        }
    }

    // The written file is a working model: greedy decoding still answers the smoke prompt.
    let back = compress_model::load(&out, &device).unwrap();
    let prompt = back
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    let options = GenerateOptions {
        max_new_tokens: 3,
        sampling: Sampling::Greedy,
        stop_token: back.tokenizer.eos_id(),
    };
    let gen = generate(&back.model, &prompt, &options, |_| {}).unwrap();
    let text = back.tokenizer.decode(&gen.tokens).unwrap();
    assert!(text.starts_with(" Paris"), "got {text:?}");
}
