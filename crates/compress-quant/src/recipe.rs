//! Recipe configurations of the quantizers (`method = "rtn" | "gptq" | "hqq" | "awq"`), for
//! [`compress_core::recipe::Recipe`].
//!
//! Common fields: `bits` (2–8), `group` (weights per scale; absent = one scale per output
//! channel), `symmetric` (default true; HQQ is always asymmetric). RTN and GPTQ also take
//! `k_quant = "q4_k"` (or `q2_k`, `q3_k`, `q5_k`, `q6_k`): scales fitted to llama.cpp's k-quant
//! super-blocks so GGUF export writes that type exactly (see [`crate::kquant`]).

use compress_core::compressor::Compressor;
use compress_core::kquant::KQuant;
use compress_core::packed::{QuantScheme, Symmetry};
use compress_core::recipe::StepMethod;
use serde::{Deserialize, Serialize};

use crate::awq::Awq;
use crate::gptq::Gptq;
use crate::grid::{GridConfig, ScaleSearch};
use crate::hqq::Hqq;
use crate::rtn::Rtn;

/// A quantizer and its parameters, as written in a recipe step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum QuantMethod {
    /// Round to nearest.
    Rtn(RtnConfig),
    /// GPTQ.
    Gptq(GptqConfig),
    /// HQQ.
    Hqq(HqqConfig),
    /// AWQ.
    Awq(AwqConfig),
}

/// AWQ parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwqConfig {
    /// Code width, 2–8.
    pub bits: u8,
    /// Weights per scale; per-channel when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// Symmetric grid (no zero points).
    #[serde(default = "yes")]
    pub symmetric: bool,
    /// Exponents tried in the scale search (default 20).
    #[serde(default = "n_grid")]
    pub n_grid: usize,
    /// Weight-error clipping search in the final quantization (default false; see the AWQ docs).
    #[serde(default)]
    pub search: bool,
}

fn n_grid() -> usize {
    20
}

fn yes() -> bool {
    true
}
fn one() -> f32 {
    1.0
}
fn damp() -> f64 {
    0.01
}
fn block() -> usize {
    128
}

/// RTN parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtnConfig {
    /// Code width, 2–8.
    pub bits: u8,
    /// Weights per scale; per-channel when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// Symmetric grid (no zero points).
    #[serde(default = "yes")]
    pub symmetric: bool,
    /// Fraction of each group's range kept, in (0, 1].
    #[serde(default = "one")]
    pub clip: f32,
    /// Search each group's scale for the least squared error.
    #[serde(default)]
    pub search: bool,
    /// Weight errors by the inputs' mean squares (needs calibration).
    #[serde(default)]
    pub use_activations: bool,
    /// Fit scales to this llama.cpp k-quant (`"q4_k"`, ...; see `compress_quant::kquant`) so
    /// GGUF export writes it exactly; `bits`/`group`/`symmetric` must be the format's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_quant: Option<KQuant>,
}

/// GPTQ parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptqConfig {
    /// Code width, 2–8.
    pub bits: u8,
    /// Weights per scale; per-channel when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// Symmetric grid (no zero points).
    #[serde(default = "yes")]
    pub symmetric: bool,
    /// Damping, a fraction of the mean Hessian diagonal.
    #[serde(default = "damp")]
    pub damp: f64,
    /// Columns per lazy batch.
    #[serde(default = "block")]
    pub block_size: usize,
    /// Activation order with static groups.
    #[serde(default)]
    pub act_order: bool,
    /// Fraction of each group's range kept, in (0, 1].
    #[serde(default = "one")]
    pub clip: f32,
    /// Search each group's scale for the least squared error.
    #[serde(default)]
    pub search: bool,
    /// Fit scales to this llama.cpp k-quant (static groups; see `compress_quant::kquant`) so
    /// GGUF export writes it exactly; `bits`/`group`/`symmetric` must be the format's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k_quant: Option<KQuant>,
}

/// HQQ parameters (always asymmetric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HqqConfig {
    /// Code width, 2–8.
    pub bits: u8,
    /// Weights per scale; per-channel when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    /// Maximum iterations (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iters: Option<usize>,
    /// The `p` of the ℓ_p error (default 0.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lp: Option<f32>,
}

fn scheme(bits: u8, group: Option<usize>, symmetric: bool) -> Result<QuantScheme, String> {
    if group == Some(0) {
        return Err(
            "group = 0: a group holds at least one weight (omit it for per-channel)".into(),
        );
    }
    let sym = if symmetric {
        Symmetry::Symmetric
    } else {
        Symmetry::Asymmetric
    };
    QuantScheme::new(bits, group, sym).map_err(|e| format!("bits = {bits}: {e}"))
}

fn grid(clip: f32, search: bool) -> Result<GridConfig, String> {
    let g = GridConfig {
        clip,
        search: search.then(ScaleSearch::default),
        k_quant: None,
    };
    g.validate()?;
    Ok(g)
}

/// [`grid`] constrained to `k_quant`, whose scheme `scheme` must be.
fn k_grid(
    clip: f32,
    search: bool,
    k_quant: Option<KQuant>,
    scheme: &QuantScheme,
) -> Result<GridConfig, String> {
    if let Some(k) = k_quant {
        k.check_scheme(scheme)?;
    }
    Ok(GridConfig {
        k_quant,
        ..grid(clip, search)?
    })
}

impl StepMethod for QuantMethod {
    fn method_name(&self) -> &'static str {
        match self {
            QuantMethod::Rtn(_) => "rtn",
            QuantMethod::Gptq(_) => "gptq",
            QuantMethod::Hqq(_) => "hqq",
            QuantMethod::Awq(_) => "awq",
        }
    }

    fn build(&self) -> Result<Box<dyn Compressor>, String> {
        Ok(match self {
            QuantMethod::Rtn(c) => {
                let scheme = scheme(c.bits, c.group, c.symmetric)?;
                Box::new(Rtn {
                    grid: k_grid(c.clip, c.search, c.k_quant, &scheme)?,
                    scheme,
                    use_activations: c.use_activations,
                })
            }
            QuantMethod::Gptq(c) => {
                if !(c.damp >= 0.0 && c.damp.is_finite()) {
                    return Err(format!("damp = {}: must be a finite value ≥ 0", c.damp));
                }
                if c.block_size == 0 {
                    return Err("block_size = 0: must be at least 1".into());
                }
                let scheme = scheme(c.bits, c.group, c.symmetric)?;
                Box::new(Gptq {
                    grid: k_grid(c.clip, c.search, c.k_quant, &scheme)?,
                    scheme,
                    damp: c.damp,
                    block_size: c.block_size,
                    act_order: c.act_order,
                })
            }
            QuantMethod::Hqq(c) => {
                let mut h = Hqq::new(scheme(c.bits, c.group, false)?);
                if let Some(i) = c.iters {
                    h.iters = i;
                }
                if let Some(lp) = c.lp {
                    if !(lp > 0.0 && lp <= 1.0) {
                        return Err(format!("lp = {lp}: must lie in (0, 1]"));
                    }
                    h.lp = lp;
                }
                Box::new(h)
            }
            QuantMethod::Awq(c) => {
                if c.n_grid == 0 {
                    return Err("n_grid = 0: must be at least 1".into());
                }
                let mut a = Awq::new(scheme(c.bits, c.group, c.symmetric)?);
                a.n_grid = c.n_grid;
                a.grid = grid(1.0, c.search)?;
                Box::new(a)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compress_core::recipe::{Recipe, RecipeError};

    type R = Recipe<QuantMethod>;

    #[test]
    fn mixed_precision_recipe_round_trips() {
        let text = r#"
version = 1
[calibration]
nsamples = 16
seqlen = 64

[[step]]
layers = "down_proj$"
method = "gptq"
bits = 8

[[step]]
layers = "(attn|gate|up)"
method = "gptq"
bits = 4
group = 32
act_order = true

[[step]]
layers = "v_proj"
method = "hqq"
bits = 3
group = 16
"#;
        let r = R::from_toml(text).unwrap();
        assert_eq!(r.calibration.nsamples, 16);
        assert_eq!(r.calibration.batch_size, 2);
        assert_eq!(r.steps.len(), 3);
        let p = r.pipeline().unwrap();
        let names: Vec<String> = p.steps.iter().map(|s| s.compressor.name()).collect();
        assert_eq!(names, ["gptq-w8c", "gptq-w4g32-act", "hqq-w3g16a"]);
        use compress_core::layer_id::{LinearId, LinearKind};
        assert!(p.steps[0]
            .filter
            .matches(LinearId::block(2, LinearKind::Down)));
        assert!(!p.steps[0]
            .filter
            .matches(LinearId::block(2, LinearKind::Up)));
        let again = R::from_toml(&r.to_toml().unwrap()).unwrap();
        assert_eq!(again, r);
    }

    fn err(text: &str) -> String {
        match R::from_toml(text) {
            Err(RecipeError::Parse(m)) | Err(RecipeError::Invalid(m)) => m,
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn invalid_recipes_name_the_field() {
        let step = "[[step]]\nmethod = \"gptq\"\n";
        assert!(err(&format!("version = 2\n{step}bits = 4\n")).contains("version = 2"));
        assert!(err(&format!("version = 1\n{step}bitz = 4\n")).contains("bitz"));
        assert!(err(&format!("version = 1\n{step}bits = 9\n")).contains("bits = 9"));
        assert!(err(&format!("version = 1\n{step}bits = 4\ngroup = 0\n")).contains("group = 0"));
        assert!(err(&format!("version = 1\n{step}bits = 4\ndamp = -1.0\n")).contains("damp"));
        let e = err("version = 1\n[[step]]\nlayers = \"(\"\nmethod = \"rtn\"\nbits = 4\n");
        assert!(e.contains("step 1 (rtn): layers"), "{e}");
        assert!(err("version = 1\n[[step]]\nmethod = \"awq2\"\nbits = 4\n").contains("awq2"));
        assert!(err(
            "version = 1\n[calibration]\nnsamples = 0\n[[step]]\nmethod = \"rtn\"\nbits = 4\n"
        )
        .contains("calibration.nsamples"));
        assert!(err("version = 1\n").contains("at least one [[step]]"));
        let e = err("version = 1\n[[step]]\nmethod = \"rtn\"\nbits = 4\nclip = 2.0\n");
        assert!(e.contains("clip"), "{e}");
        let ok = R::from_toml(
            "version = 1\n[[step]]\nmethod = \"gptq\"\nbits = 6\ngroup = 16\nk_quant = \"q6_k\"\n",
        )
        .unwrap();
        assert_eq!(
            ok.pipeline().unwrap().steps[0].compressor.name(),
            "gptq-w6g16-q6_k"
        );
        let e = err("version = 1\n[[step]]\nmethod = \"gptq\"\nbits = 4\nk_quant = \"q4_k\"\n");
        assert!(
            e.contains("k_quant = q4_k needs bits = 4, group = 32"),
            "{e}"
        );
        assert!(
            err("version = 1\n[[step]]\nmethod = \"rtn\"\nbits = 4\nk_quant = \"q4_j\"\n")
                .contains("q4_j")
        );
    }
}
