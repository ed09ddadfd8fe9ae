//! Bit-exact comparison with gguf-py's independent numpy dequantizers.
//!
//! The fixture is produced by `tests/fixtures/make_fixtures.py` (gguf-py 0.19.0).

#[path = "gguf_support/mod.rs"]
mod common;

use common::{build_gguf, fixture, from_hex, TensorSpec};
use compress_model::gguf::{dequantize_into, GgmlType, GgufFile};
use serde_json::Value;

struct Case {
    ty: GgmlType,
    data: Vec<u8>,
    expected: Vec<u32>,
}

fn load_cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("dequant_reference.json")).expect("fixture");
    let json: Value = serde_json::from_str(&text).expect("json");
    json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let id = c["type_id"].as_u64().unwrap() as u32;
            let ty = GgmlType::from_id(id).expect("known type");
            assert_eq!(ty.name(), c["type"].as_str().unwrap());
            let expected: Vec<u32> = c["expected_bits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(expected.len() as u64, c["n_elements"].as_u64().unwrap());
            Case {
                ty,
                data: from_hex(c["data_hex"].as_str().unwrap()),
                expected,
            }
        })
        .collect()
}

fn assert_bits_eq(ty: GgmlType, got: &[f32], expected: &[u32]) {
    assert_eq!(got.len(), expected.len(), "{ty}: length");
    let mismatches: Vec<_> = got
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (g, e))| g.to_bits() != **e)
        .take(5)
        .map(|(i, (g, e))| {
            format!(
                "[{i}] ours {g:e} ({:#010x}) vs gguf-py {:e} ({e:#010x})",
                g.to_bits(),
                f32::from_bits(*e)
            )
        })
        .collect();
    assert!(mismatches.is_empty(), "{ty}: {}", mismatches.join("; "));
}

#[test]
fn fixture_covers_every_supported_type() {
    let cases = load_cases();
    let covered: Vec<GgmlType> = cases.iter().map(|c| c.ty).collect();
    for &ty in GgmlType::ALL {
        assert_eq!(
            ty.can_dequantize(),
            covered.contains(&ty),
            "{ty}: fixture coverage vs can_dequantize"
        );
    }
}

#[test]
fn raw_dequant_matches_gguf_py_bit_for_bit() {
    for case in load_cases() {
        let mut out = vec![f32::NAN; case.expected.len()];
        dequantize_into(case.ty, &case.data, &mut out).unwrap();
        assert_bits_eq(case.ty, &out, &case.expected);
    }
}

#[test]
fn quant_fixture_values_are_finite() {
    // The generator keeps f16 scales finite, so quantized outputs are finite too.
    for case in load_cases().iter().filter(|c| c.ty.is_quantized()) {
        assert!(
            case.expected.iter().all(|&b| f32::from_bits(b).is_finite()),
            "{}",
            case.ty
        );
    }
}

/// The same data placed as tensors in a GGUF file and read back through `GgufFile`.
#[test]
fn file_dequant_matches_gguf_py() {
    let cases = load_cases();
    let tensors: Vec<TensorSpec> = cases
        .iter()
        .map(|c| {
            let n = c.expected.len() as u64;
            // Two rows where possible, to exercise 2-D shapes.
            let bs = c.ty.block_size();
            let dims = if (n / bs).is_multiple_of(2) {
                vec![n / 2, 2]
            } else {
                vec![n]
            };
            TensorSpec {
                name: format!("t.{}", c.ty.name().to_lowercase()),
                dims,
                type_id: c.ty.id(),
                data: c.data.clone(),
            }
        })
        .collect();
    let file = GgufFile::from_bytes(build_gguf(&[], &tensors)).unwrap();
    assert_eq!(file.tensors().len(), cases.len());
    for (c, t) in cases.iter().zip(&tensors) {
        let info = file.tensor(&t.name).unwrap();
        assert_eq!(info.ggml_type(), c.ty);
        assert_eq!(info.n_bytes(), c.data.len() as u64);
        assert_eq!(file.tensor_bytes(info), &c.data[..]);
        assert_bits_eq(c.ty, &file.dequantize(&t.name).unwrap(), &c.expected);
    }
}

#[test]
fn buffer_size_mismatch_is_an_error() {
    let mut out = vec![0f32; 32];
    let err = dequantize_into(GgmlType::Q4_0, &[0u8; 17], &mut out).unwrap_err();
    assert!(
        matches!(err, compress_model::gguf::GgufError::BufferSize { .. }),
        "{err}"
    );
    let err = dequantize_into(GgmlType::Q4_0, &[0u8; 18], &mut out[..31]).unwrap_err();
    assert!(
        matches!(err, compress_model::gguf::GgufError::BufferSize { .. }),
        "{err}"
    );
    let err = dequantize_into(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]).unwrap_err();
    assert!(
        matches!(err, compress_model::gguf::GgufError::UnsupportedType { .. }),
        "{err}"
    );
}
