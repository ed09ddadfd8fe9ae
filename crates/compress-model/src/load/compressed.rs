//! Reading compressed-tensors `pack-quantized` checkpoints (what vLLM and llm-compressor use,
//! and what [`crate::save::write_compressed_tensors`] writes): a quantized module `M` stores
//! `M.weight_packed` (int32 words, each row a little-endian bit stream of unsigned codes
//! `q + 2^(b−1)`), `M.weight_scale`, `M.weight_zero_point` (asymmetric: signed zero points
//! packed the same way along the output dimension) and `M.weight_shape`; it decompresses to
//! `(q − zp) · scale`. Modules are matched to their config group by name, by a `re:` regex, or
//! by the class name `Linear` (llm-compressor's usual target).

use std::collections::HashMap;

use serde_json::Value;

use crate::error::ModelError;
use crate::family::HfConfigJson;

/// One config group's weight scheme.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PackScheme {
    /// Code width.
    pub bits: u32,
    /// Symmetric (no zero points).
    pub symmetric: bool,
}

/// The `pack-quantized` config groups of a checkpoint: `(targets, scheme)`, empty for an
/// unquantized one.
pub(crate) fn config_groups(
    hf: &HfConfigJson,
) -> Result<Vec<(Vec<String>, PackScheme)>, ModelError> {
    let Some(qc) = hf.get("quantization_config") else {
        return Ok(Vec::new());
    };
    let bad = |what: &str| ModelError::InvalidConfig(format!("quantization_config: {what}"));
    let method = qc.get("quant_method").and_then(Value::as_str).unwrap_or("");
    if method != "compressed-tensors" {
        return Err(bad(&format!(
            "quant_method `{method}` is not read (compressed-tensors is)"
        )));
    }
    let format = qc.get("format").and_then(Value::as_str).unwrap_or("");
    if format != "pack-quantized" {
        return Err(bad(&format!(
            "format `{format}` is not read (pack-quantized is)"
        )));
    }
    let groups = qc
        .get("config_groups")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no config_groups"))?;
    let mut out = Vec::new();
    for (name, g) in groups {
        let targets: Vec<String> = g
            .get("targets")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| bad(&format!("{name} has no targets")))?;
        let w = g
            .get("weights")
            .ok_or_else(|| bad(&format!("{name} has no weights scheme")))?;
        let bits = w
            .get("num_bits")
            .and_then(Value::as_u64)
            .filter(|b| (1..=8).contains(b))
            .ok_or_else(|| bad(&format!("{name}: num_bits must be 1–8")))?;
        if w.get("type").and_then(Value::as_str).unwrap_or("int") != "int" {
            return Err(bad(&format!("{name}: only integer weights are read")));
        }
        let symmetric = w.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
        out.push((
            targets,
            PackScheme {
                bits: bits as u32,
                symmetric,
            },
        ));
    }
    Ok(out)
}

/// The scheme of module `module` (`model.layers.0.self_attn.q_proj`): its group by exact name,
/// `re:` regex or the class name `Linear`.
pub(crate) fn scheme_of<'a>(
    groups: &'a [(Vec<String>, PackScheme)],
    module: &str,
) -> Option<&'a PackScheme> {
    let matches = |t: &str| {
        t == module
            || t == "Linear"
            || t.strip_prefix("re:")
                .and_then(|r| regex::Regex::new(r).ok())
                .is_some_and(|r| r.is_match(module))
    };
    groups
        .iter()
        .find(|(targets, _)| targets.iter().any(|t| t == module))
        .or_else(|| {
            groups
                .iter()
                .find(|(targets, _)| targets.iter().any(|t| matches(t)))
        })
        .map(|(_, s)| s)
}

/// The `b`-bit unsigned values of a little-endian bit stream of 32-bit words, `n` of them.
fn unpack(words: &[u8], bits: u32, n: usize) -> Vec<u32> {
    let mask = (1u64 << bits) - 1;
    (0..n)
        .map(|i| {
            let bit = i * bits as usize;
            let (byte, shift) = (bit / 8, bit % 8);
            let mut v = 0u64;
            for (k, b) in words[byte..].iter().take(8).enumerate() {
                v |= (*b as u64) << (8 * k);
            }
            ((v >> shift) & mask) as u32
        })
        .collect()
}

/// The tensors of one packed module.
pub(crate) struct PackedModule<'a> {
    /// `weight_packed` bytes, int32 `[out, words]`.
    pub packed: &'a [u8],
    /// `weight_scale`, as f32: `[out, groups]` or one value.
    pub scale: Vec<f32>,
    /// `weight_zero_point` bytes, int32 `[ceil(out·b/32), groups]`, when asymmetric.
    pub zero_point: Option<&'a [u8]>,
    /// `[out, in]`.
    pub shape: [usize; 2],
}

/// `(q − zp) · scale` of a packed module, row-major `[out, in]`; the error names `module`.
pub(crate) fn dequantize(
    module: &str,
    m: &PackedModule<'_>,
    scheme: &PackScheme,
) -> Result<Vec<f32>, ModelError> {
    let [out, inp] = m.shape;
    let bits = scheme.bits;
    let words = (inp * bits as usize).div_ceil(32);
    let bad = |what: String| ModelError::InvalidConfig(format!("{module}: {what}"));
    if m.packed.len() != out * words * 4 {
        return Err(bad(format!(
            "weight_packed holds {} bytes, [{out}, {inp}] at {bits} bits needs {}",
            m.packed.len(),
            out * words * 4
        )));
    }
    let groups = if m.scale.len() == 1 {
        1
    } else {
        m.scale.len() / out.max(1)
    };
    if groups == 0
        || (m.scale.len() != 1 && m.scale.len() != out * groups)
        || !inp.is_multiple_of(groups)
    {
        return Err(bad(format!("{} scales for [{out}, {inp}]", m.scale.len())));
    }
    let per_tensor = m.scale.len() == 1;
    let group = inp / groups;
    let half = 1i64 << (bits - 1);
    // Signed zero points per (row, group), unpacked column by column.
    let zeros: Option<Vec<i64>> = match (m.zero_point, scheme.symmetric) {
        (Some(z), false) => {
            let col_words = (out * bits as usize).div_ceil(32);
            if z.len() != col_words * groups * 4 {
                return Err(bad(format!(
                    "weight_zero_point holds {} bytes, {} expected",
                    z.len(),
                    col_words * groups * 4
                )));
            }
            let mut zeros = vec![0i64; out * groups];
            for g in 0..groups {
                // Row-major [col_words, groups] words: column g's stream.
                let stream: Vec<u8> = (0..col_words)
                    .flat_map(|w| z[(w * groups + g) * 4..(w * groups + g) * 4 + 4].to_vec())
                    .collect();
                for (r, v) in unpack(&stream, bits, out).into_iter().enumerate() {
                    zeros[r * groups + g] = v as i64 - half;
                }
            }
            Some(zeros)
        }
        (None, false) => return Err(bad("an asymmetric scheme without weight_zero_point".into())),
        _ => None,
    };
    let mut w = Vec::with_capacity(out * inp);
    for r in 0..out {
        let row = &m.packed[r * words * 4..(r + 1) * words * 4];
        for (c, code) in unpack(row, bits, inp).into_iter().enumerate() {
            let g = c / group;
            let (scale, zp) = match per_tensor {
                true => (m.scale[0], 0),
                false => (
                    m.scale[r * groups + g],
                    zeros.as_ref().map_or(0, |z| z[r * groups + g]),
                ),
            };
            w.push(((code as i64 - half - zp) as f32) * scale);
        }
    }
    Ok(w)
}

/// The modules of `names` (tensor names) that are packed: `module → scheme`.
pub(crate) fn packed_modules<'a>(
    names: impl Iterator<Item = &'a String>,
    groups: &[(Vec<String>, PackScheme)],
) -> HashMap<String, PackScheme> {
    names
        .filter_map(|n| n.strip_suffix(".weight_packed"))
        .filter_map(|m| scheme_of(groups, m).map(|s| (m.to_string(), s.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_streams_unpack_little_endian() {
        // 4-bit codes 1, 2, 15, 0 in one word: 0x0F21.
        let words = [0x21u8, 0x0F, 0, 0];
        assert_eq!(unpack(&words, 4, 4), vec![1, 2, 15, 0]);
        // 3-bit codes crossing a byte: 5, 6, 7 → bits 101 110 111 = 0b111_110_101.
        let v: u32 = 5 | (6 << 3) | (7 << 6);
        assert_eq!(unpack(&v.to_le_bytes(), 3, 3), vec![5, 6, 7]);
    }

    #[test]
    fn modules_find_their_group_by_name_regex_or_class() {
        let s = |bits| PackScheme {
            bits,
            symmetric: true,
        };
        let groups = vec![
            (vec!["model.layers.0.mlp.down_proj".to_string()], s(8)),
            (vec!["re:.*self_attn\\.(q|k)_proj$".to_string()], s(3)),
            (vec!["Linear".to_string()], s(4)),
        ];
        let of = |m: &str| scheme_of(&groups, m).map(|s| s.bits);
        assert_eq!(of("model.layers.0.mlp.down_proj"), Some(8));
        assert_eq!(of("model.layers.5.self_attn.k_proj"), Some(3));
        assert_eq!(of("model.layers.5.mlp.up_proj"), Some(4));
        assert_eq!(scheme_of(&groups[..2], "model.layers.5.mlp.up_proj"), None);
    }

    #[test]
    fn symmetric_groups_dequantize_around_the_midpoint() {
        // One row of 4 weights, 4 bits, two groups of 2: codes 8 (0), 9 (+1), 7 (−1), 15 (+7).
        let codes = [8u32, 9, 7, 15];
        let word: u32 = codes.iter().enumerate().map(|(i, c)| c << (4 * i)).sum();
        let m = PackedModule {
            packed: &word.to_le_bytes(),
            scale: vec![0.5, 2.0],
            zero_point: None,
            shape: [1, 4],
        };
        let scheme = PackScheme {
            bits: 4,
            symmetric: true,
        };
        assert_eq!(
            dequantize("m", &m, &scheme).unwrap(),
            vec![0.0, 0.5, -2.0, 14.0]
        );
        let e = dequantize(
            "m",
            &PackedModule {
                scale: vec![1.0; 3],
                ..m
            },
            &scheme,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("m:") && e.contains("3 scales"), "{e}");
    }
}
