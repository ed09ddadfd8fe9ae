//! Recipe configurations of the pruners (`method = "magnitude" | "wanda" | "sparsegpt"`), for
//! [`compress_core::recipe::Recipe`].
//!
//! Every pruner takes exactly one of `sparsity = 0.5` (unstructured, a fraction in `[0, 1)`) or
//! `nm = "2:4"` (at most N kept in every M consecutive weights). SparseGPT also takes `damp`,
//! `block_size`, and an optional `quantize = { bits = 4, group = 128, symmetric = true }` table
//! that quantizes the kept weights in the same sweep (joint mode):
//!
//! ```toml
//! version = 1
//! [[step]]
//! method = "sparsegpt"
//! nm = "2:4"
//! quantize = { bits = 4, group = 128 }
//! ```

use compress_core::compressor::Compressor;
use compress_core::packed::{QuantScheme, Symmetry};
use compress_core::recipe::StepMethod;
use compress_core::sparsity::SparsityPattern;
use compress_quant::grid::GridConfig;
use compress_quant::obs::SweepQuant;
use serde::{Deserialize, Serialize};

use crate::magnitude::Magnitude;
use crate::select::Comparison;
use crate::sparsegpt::SparseGpt;
use crate::wanda::Wanda;

/// A pruner and its parameters, as written in a recipe step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum PruneMethod {
    /// Magnitude pruning.
    Magnitude(ScoreConfig),
    /// Wanda.
    Wanda(ScoreConfig),
    /// SparseGPT, optionally joint with quantization.
    Sparsegpt(SparseGptConfig),
}

/// The sparsity target: exactly one of its fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    /// Unstructured fraction pruned, in `[0, 1)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparsity: Option<f64>,
    /// N:M as `"N:M"`, e.g. `"2:4"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nm: Option<String>,
}

impl PatternConfig {
    /// The validated pattern, or which field is wrong.
    pub fn pattern(&self) -> Result<SparsityPattern, String> {
        let p = match (self.sparsity, &self.nm) {
            (Some(s), None) => SparsityPattern::Unstructured(s),
            (None, Some(t)) => {
                let parsed = t
                    .split_once(':')
                    .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
                let Some((n, m)) = parsed else {
                    return Err(format!("nm = \"{t}\": write it as \"N:M\", e.g. \"2:4\""));
                };
                SparsityPattern::NM { n, m }
            }
            (Some(_), Some(_)) => return Err("give either sparsity or nm, not both".into()),
            (None, None) => return Err("needs sparsity = 0.5 or nm = \"2:4\"".into()),
        };
        p.validate().map(|_| p)
    }
}

/// Parameters of the score-based pruners (magnitude, Wanda).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreConfig {
    /// The target.
    #[serde(flatten)]
    pub pattern: PatternConfig,
    /// `"layer"` or `"row"`: which weights compete for an unstructured budget (default: layer
    /// for magnitude, row for Wanda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<String>,
}

/// The grid of SparseGPT's joint quantization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JointQuantConfig {
    /// Code width, 2–8.
    pub bits: u8,
    /// Weights per scale; per-channel when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// Symmetric grid (default true).
    #[serde(default = "yes")]
    pub symmetric: bool,
}

/// SparseGPT parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseGptConfig {
    /// The target.
    #[serde(flatten)]
    pub pattern: PatternConfig,
    /// Damping, a fraction of the mean Hessian diagonal (default 0.01).
    #[serde(default = "damp")]
    pub damp: f64,
    /// Columns per block (default 128).
    #[serde(default = "block")]
    pub block_size: usize,
    /// Quantize the kept weights in the same sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<JointQuantConfig>,
}

fn yes() -> bool {
    true
}
fn damp() -> f64 {
    0.01
}
fn block() -> usize {
    128
}

fn comparison(c: &Option<String>, default: Comparison) -> Result<Comparison, String> {
    match c.as_deref() {
        None => Ok(default),
        Some("layer") => Ok(Comparison::Layer),
        Some("row") => Ok(Comparison::Row),
        Some(other) => Err(format!("compare = \"{other}\": use \"layer\" or \"row\"")),
    }
}

impl StepMethod for PruneMethod {
    fn method_name(&self) -> &'static str {
        match self {
            PruneMethod::Magnitude(_) => "magnitude",
            PruneMethod::Wanda(_) => "wanda",
            PruneMethod::Sparsegpt(_) => "sparsegpt",
        }
    }

    fn build(&self) -> Result<Box<dyn Compressor>, String> {
        Ok(match self {
            PruneMethod::Magnitude(c) => Box::new(Magnitude {
                pattern: c.pattern.pattern()?,
                comparison: comparison(&c.compare, Comparison::Layer)?,
            }),
            PruneMethod::Wanda(c) => Box::new(Wanda {
                pattern: c.pattern.pattern()?,
                comparison: comparison(&c.compare, Comparison::Row)?,
            }),
            PruneMethod::Sparsegpt(c) => {
                if !(c.damp >= 0.0 && c.damp.is_finite()) {
                    return Err(format!("damp = {}: must be a finite value ≥ 0", c.damp));
                }
                if c.block_size == 0 {
                    return Err("block_size = 0: must be at least 1".into());
                }
                let quant = match &c.quantize {
                    None => None,
                    Some(q) => {
                        if q.group == Some(0) {
                            return Err("quantize.group = 0: omit it for per-channel".into());
                        }
                        let sym = if q.symmetric {
                            Symmetry::Symmetric
                        } else {
                            Symmetry::Asymmetric
                        };
                        let scheme = QuantScheme::new(q.bits, q.group, sym)
                            .map_err(|e| format!("quantize.bits = {}: {e}", q.bits))?;
                        Some(SweepQuant {
                            scheme,
                            grid: GridConfig::default(),
                            static_groups: false,
                        })
                    }
                };
                Box::new(SparseGpt {
                    pattern: c.pattern.pattern()?,
                    damp: c.damp,
                    block_size: c.block_size,
                    quant,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compress_core::recipe::{Recipe, RecipeError};

    type R = Recipe<PruneMethod>;

    #[test]
    fn recipes_build_and_round_trip() {
        let text = r#"
version = 1
[[step]]
layers = "mlp"
method = "wanda"
sparsity = 0.5

[[step]]
layers = "attn"
method = "sparsegpt"
nm = "2:4"
quantize = { bits = 4, group = 128 }

[[step]]
method = "magnitude"
nm = "4:8"
compare = "row"
"#;
        let r = R::from_toml(text).unwrap();
        let names: Vec<String> = r
            .pipeline()
            .unwrap()
            .steps
            .iter()
            .map(|s| s.compressor.name())
            .collect();
        assert_eq!(
            names,
            ["wanda-50", "sparsegpt-2of4+w4g128", "magnitude-4of8"]
        );
        assert_eq!(R::from_toml(&r.to_toml().unwrap()).unwrap(), r);
    }

    fn err(body: &str) -> String {
        match R::from_toml(&format!("version = 1\n[[step]]\n{body}")) {
            Err(RecipeError::Parse(m)) | Err(RecipeError::Invalid(m)) => m,
            Ok(_) => panic!("accepted: {body}"),
        }
    }

    #[test]
    fn invalid_recipes_name_the_field() {
        assert!(err("method = \"wanda\"\nsparsity = 1.2\n").contains("sparsity = 1.2"));
        assert!(err("method = \"wanda\"\nnm = \"2-4\"\n").contains("nm = \"2-4\""));
        assert!(err("method = \"wanda\"\nnm = \"4:4\"\n").contains("4:4"));
        assert!(err("method = \"wanda\"\n").contains("needs sparsity"));
        assert!(err("method = \"wanda\"\nsparsity = 0.5\nnm = \"2:4\"\n").contains("not both"));
        assert!(
            err("method = \"magnitude\"\nsparsity = 0.5\ncompare = \"col\"\n").contains("compare")
        );
        let e = err("method = \"sparsegpt\"\nsparsity = 0.5\nquantize = { bits = 9 }\n");
        assert!(e.contains("step 1 (sparsegpt): quantize.bits = 9"), "{e}");
        assert!(
            err("method = \"sparsegpt\"\nsparsity = 0.5\nblock_size = 0\n").contains("block_size")
        );
    }
}
