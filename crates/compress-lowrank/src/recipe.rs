//! Recipe steps for the low-rank compressors:
//!
//! ```toml
//! [[step]]
//! method = "svd-llm"     # or "svd", "asvd"
//! ratio = 0.8            # exactly one of: ratio (kept parameter fraction), energy, rank
//! damp = 0.01            # svd-llm only
//! # alpha = 0.5          # asvd only
//!
//! [[step]]
//! method = "gptq"
//! bits = 3
//!
//! [[step]]
//! method = "lowrank-correction"   # after a quantizer: W ≈ Q + U V
//! rank = 16
//! whiten = true                   # default; false: plain SVD of the residual
//! ```

use compress_core::compressor::Compressor;
use compress_core::recipe::StepMethod;
use serde::{Deserialize, Serialize};

use crate::correction::LowRankCorrection;
use crate::rank::RankRule;
use crate::svd::{LowRank, Whitening};

/// A low-rank method and its parameters, as written in a recipe step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method")]
pub enum LowRankMethod {
    /// Plain truncated SVD.
    #[serde(rename = "svd")]
    Svd(LowRankConfig),
    /// Activation-scaled SVD.
    #[serde(rename = "asvd")]
    Asvd(LowRankConfig),
    /// Truncation-aware whitened SVD.
    #[serde(rename = "svd-llm")]
    SvdLlm(LowRankConfig),
    /// Low-rank correction of the quantization error of the step before.
    #[serde(rename = "lowrank-correction")]
    Correction(CorrectionConfig),
}

/// Parameters of a `lowrank-correction` step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrectionConfig {
    /// Rank of the correction term.
    pub rank: usize,
    /// Whiten by the Cholesky factor of XᵀX (default true).
    #[serde(default = "yes")]
    pub whiten: bool,
    /// Damping fraction of the whitening (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damp: Option<f64>,
}

fn yes() -> bool {
    true
}

/// Parameters of a low-rank step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowRankConfig {
    /// A fixed rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// The fraction of each layer's parameters kept, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// The fraction of spectral energy kept, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<f64>,
    /// ASVD's exponent (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// SVD-LLM's damping fraction (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damp: Option<f64>,
}

impl LowRankConfig {
    /// A kept-parameter ratio with the methods' default parameters.
    pub fn ratio(ratio: f64) -> Self {
        Self {
            rank: None,
            ratio: Some(ratio),
            energy: None,
            alpha: None,
            damp: None,
        }
    }

    /// The rank rule, or which field is wrong.
    pub fn rule(&self) -> Result<RankRule, String> {
        let rule = match (self.rank, self.ratio, self.energy) {
            (Some(r), None, None) => RankRule::Fixed(r),
            (None, Some(p), None) => RankRule::ParamRatio(p),
            (None, None, Some(e)) => RankRule::Energy(e),
            _ => return Err("give exactly one of `rank`, `ratio`, `energy`".into()),
        };
        rule.validate().map(|_| rule)
    }
}

impl LowRankMethod {
    /// The same factorization (method, α, damping) with its rank rule replaced by a
    /// kept-parameter `ratio`: what rank allocation ([`crate::allocate`]) assigns per layer.
    /// An error for a correction step, which has no parameter ratio, or a bad ratio.
    pub fn with_ratio(&self, ratio: f64) -> Result<Self, String> {
        let with = |c: &LowRankConfig| LowRankConfig {
            ratio: Some(ratio),
            rank: None,
            energy: None,
            ..c.clone()
        };
        let m = match self {
            LowRankMethod::Svd(c) => LowRankMethod::Svd(with(c)),
            LowRankMethod::Asvd(c) => LowRankMethod::Asvd(with(c)),
            LowRankMethod::SvdLlm(c) => LowRankMethod::SvdLlm(with(c)),
            LowRankMethod::Correction(_) => {
                return Err("a lowrank-correction step has no parameter ratio to allocate".into())
            }
        };
        m.build().map(|_| m)
    }
}

impl StepMethod for LowRankMethod {
    fn method_name(&self) -> &'static str {
        match self {
            LowRankMethod::Svd(_) => "svd",
            LowRankMethod::Asvd(_) => "asvd",
            LowRankMethod::SvdLlm(_) => "svd-llm",
            LowRankMethod::Correction(_) => "lowrank-correction",
        }
    }

    fn build(&self) -> Result<Box<dyn Compressor>, String> {
        let (c, whitening) = match self {
            LowRankMethod::Correction(c) => return build_correction(c),
            LowRankMethod::Svd(c) => (c, Whitening::None),
            LowRankMethod::Asvd(c) => (
                c,
                Whitening::Activation {
                    alpha: c.alpha.unwrap_or(0.5),
                },
            ),
            LowRankMethod::SvdLlm(c) => (
                c,
                Whitening::Cholesky {
                    damp: c.damp.unwrap_or(0.01),
                },
            ),
        };
        let name = self.method_name();
        if c.alpha.is_some() && name != "asvd" {
            return Err(format!("`alpha` is an asvd parameter, not {name}'s"));
        }
        if c.damp.is_some() && name != "svd-llm" {
            return Err(format!("`damp` is an svd-llm parameter, not {name}'s"));
        }
        if let Some(a) = c.alpha {
            if !(a.is_finite() && a >= 0.0) {
                return Err(format!("alpha = {a}: must be a finite value ≥ 0"));
            }
        }
        if let Some(d) = c.damp {
            if !(d.is_finite() && d >= 0.0) {
                return Err(format!("damp = {d}: must be a finite value ≥ 0"));
            }
        }
        Ok(Box::new(LowRank {
            whitening,
            rule: c.rule()?,
        }))
    }
}

fn build_correction(c: &CorrectionConfig) -> Result<Box<dyn Compressor>, String> {
    if c.rank == 0 {
        return Err("rank = 0: a correction keeps at least one direction".into());
    }
    let damp = c.damp.unwrap_or(0.01);
    if !(damp.is_finite() && damp >= 0.0) {
        return Err(format!("damp = {damp}: must be a finite value ≥ 0"));
    }
    if !c.whiten && c.damp.is_some() {
        return Err("`damp` only applies with whiten = true".into());
    }
    Ok(Box::new(LowRankCorrection {
        rank: c.rank,
        whitening_damp: c.whiten.then_some(damp),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Box<dyn Compressor>, String> {
        let m: LowRankMethod = toml::from_str(text).map_err(|e| e.to_string())?;
        m.build()
    }

    #[test]
    fn steps_parse_and_errors_name_the_field() {
        assert_eq!(
            parse("method = \"svd-llm\"\nratio = 0.8\n").unwrap().name(),
            "svd-llm-p0.8"
        );
        assert_eq!(
            parse("method = \"asvd\"\nrank = 16\nalpha = 1.0\n")
                .unwrap()
                .name(),
            "asvd-r16"
        );
        assert_eq!(
            parse("method = \"svd\"\nenergy = 0.9\n").unwrap().name(),
            "svd-e0.9"
        );
        for (text, field) in [
            ("method = \"svd\"\nratio = 0.8\nrank = 3\n", "exactly one"),
            ("method = \"svd\"\nratio = 1.5\n", "ratio"),
            ("method = \"svd\"\nratio = 0.5\ndamp = 0.1\n", "damp"),
            ("method = \"svd-llm\"\nratio = 0.5\nalpha = 0.1\n", "alpha"),
            ("method = \"svd\"\nratoi = 0.5\n", "ratoi"),
        ] {
            let e = parse(text).err().unwrap();
            assert!(e.contains(field), "{text}: {e}");
        }
    }
}
