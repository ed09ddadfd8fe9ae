//! Recipes: a versioned, TOML-serialisable list of compression steps with layer filters.
//!
//! ```toml
//! version = 1
//!
//! [calibration]          # optional; these are the defaults
//! nsamples = 128
//! seqlen = 512
//! seed = 0
//! batch_size = 4
//! precision = "f32"    # or "bf16": bf16 calibration products (see Pipeline)
//! keep_intermediates = false  # true: faster, holds down_proj's inputs (see Pipeline)
//!
//! [[step]]
//! layers = "mlp\\.down_proj$"   # regex on layer paths such as `layers.3.mlp.down_proj`
//! method = "gptq"
//! bits = 8
//!
//! [[step]]
//! layers = "(attn|gate|up)"
//! method = "gptq"
//! bits = 4
//! group = 128
//! ```
//!
//! An optional `[heal]` table adds a training stage after every step (LoRA healing, see
//! [`HealConfig`]):
//!
//! ```toml
//! [heal]
//! rank = 8       # LoRA rank (α = 2·rank unless given)
//! steps = 60     # optimiser steps of batch_size windows of seqlen tokens
//! lr = 5e-3
//! ```
//!
//! The step type `M` is generic: each method crate defines a serde enum of its configurations
//! tagged by `method` (for example `compress_quant::recipe::QuantMethod`), and the `compress` facade
//! combines them. Unknown fields, a wrong version, a bad regex or an invalid parameter are errors
//! that name the step and the field.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::compressor::Compressor;
use crate::pipeline::{LayerFilter, Pipeline, PipelineStep};

/// The recipe schema version this crate reads and writes.
pub const RECIPE_VERSION: u32 = 1;

/// Errors reading or building a recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The TOML does not parse into a recipe (the message gives the line and the field).
    #[error("recipe: {0}")]
    Parse(String),
    /// The recipe parses but a value is invalid.
    #[error("recipe: {0}")]
    Invalid(String),
}

/// A step configuration that can build its compressor.
pub trait StepMethod {
    /// The method's name as written in recipes, e.g. `gptq`.
    fn method_name(&self) -> &'static str;
    /// Builds the compressor, or says which field is invalid and why.
    fn build(&self) -> Result<Box<dyn Compressor>, String>;
}

/// Calibration settings of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    /// Number of calibration windows.
    pub nsamples: usize,
    /// Tokens per window.
    pub seqlen: usize,
    /// Sampling seed.
    pub seed: u64,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Arithmetic of the calibration forward passes and `XᵀX` on the CPU backends
    /// ([`Pipeline::calibration_precision`]).
    pub precision: CalibrationPrecision,
    /// Keep a block's intermediate results between its stages instead of recomputing them:
    /// faster, more memory ([`Pipeline::keep_intermediates()`]).
    pub keep_intermediates: bool,
}

/// `calibration.precision` of a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationPrecision {
    /// f32 products (the default).
    #[default]
    F32,
    /// bf16 operands with f32 sums, on AMX or AVX-512 BF16 where the CPU has them.
    Bf16,
}

impl From<CalibrationPrecision> for compress_kernels::dense::DensePrecision {
    fn from(p: CalibrationPrecision) -> Self {
        match p {
            CalibrationPrecision::F32 => Self::F32,
            CalibrationPrecision::Bf16 => Self::Bf16,
        }
    }
}

impl std::str::FromStr for CalibrationPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!(
                "unknown precision `{other}` (expected f32 or bf16)"
            )),
        }
    }
}

impl std::fmt::Display for CalibrationPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl Default for CalibrationConfig {
    /// 128 windows of 512 tokens (the common GPTQ/AWQ setting for small models), seed 0,
    /// batches of 2 (see [`crate::pipeline::Pipeline::new`]), f32 products.
    fn default() -> Self {
        Self {
            nsamples: 128,
            seqlen: 512,
            seed: 0,
            batch_size: 2,
            precision: CalibrationPrecision::F32,
            keep_intermediates: false,
        }
    }
}

/// A healing stage after the recipe's steps: the compressed model is distilled from the
/// uncompressed one (KL divergence of the next-token distributions) through LoRA adapters on
/// its block projections, merged into the weights at the end; pruned weights stay pruned
/// (`compress_distill::heal` runs it; `compress run` does after the steps). The training
/// windows come from the calibration text, seeded by `calibration.seed`. Healing trains dense
/// (pruned or not) layers: heal before quantizing, not after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealConfig {
    /// LoRA rank of every adapter.
    pub rank: usize,
    /// LoRA scale numerator α (the update is `α / rank · A B`); `2 · rank` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Optimiser steps.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Tokens per window; the calibration `seqlen` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seqlen: Option<usize>,
    /// Peak learning rate (linear warm-up over the first 10% of the steps, cosine decay).
    pub lr: f64,
    /// The block projections that get adapters (`["q_proj", "v_proj"]`, or full names such as
    /// `attn.q_proj`); every projection when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
}

impl Default for HealConfig {
    /// Rank 8, 60 steps of 8 windows, peak rate 5e-3: the settings `examples/heal.rs` measured
    /// on stories260K (Wanda 50%: perplexity 24.1 → 12.0).
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: None,
            steps: 60,
            batch_size: 8,
            seqlen: None,
            lr: 5e-3,
            targets: None,
        }
    }
}

impl HealConfig {
    /// Checks every field, naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("rank", self.rank),
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("seqlen", self.seqlen.unwrap_or(1)),
        ] {
            if v == 0 {
                return Err(format!("heal.{name} must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("heal.lr = {}: must be a positive number", self.lr));
        }
        if let Some(a) = self.alpha {
            if !(a.is_finite() && a > 0.0) {
                return Err(format!("heal.alpha = {a}: must be a positive number"));
            }
        }
        Ok(())
    }
}

/// One step: a method configuration and the layers it applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipeStep<M> {
    /// Regex on layer paths (unanchored); every layer when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<String>,
    /// The method and its parameters (a `method = "…"` key plus the method's fields).
    #[serde(flatten)]
    pub method: M,
}

/// A versioned list of steps with calibration settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe<M> {
    /// Schema version; must equal [`RECIPE_VERSION`].
    pub version: u32,
    /// Calibration settings.
    #[serde(default)]
    pub calibration: CalibrationConfig,
    /// Steps, applied in order to every layer they match.
    #[serde(rename = "step", default = "Vec::new")]
    pub steps: Vec<RecipeStep<M>>,
    /// An optional healing stage after every step ([`HealConfig`]); not part of
    /// [`Recipe::pipeline`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heal: Option<HealConfig>,
}

impl<M: StepMethod + Serialize + DeserializeOwned> Recipe<M> {
    /// Parses and validates a recipe.
    pub fn from_toml(text: &str) -> Result<Self, RecipeError> {
        let recipe: Self = toml::from_str(text).map_err(|e| RecipeError::Parse(e.to_string()))?;
        recipe.validate()?;
        Ok(recipe)
    }

    /// Reads, parses and validates a recipe file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, RecipeError> {
        let path = path.as_ref();
        let text = crate::input::read_text(path, crate::input::TEXT_LIMIT)
            .map_err(|e| RecipeError::Parse(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| match e {
            RecipeError::Parse(m) => RecipeError::Parse(format!("{}: {m}", path.display())),
            RecipeError::Invalid(m) => RecipeError::Invalid(format!("{}: {m}", path.display())),
        })
    }

    /// The recipe as TOML (parses back to an equal recipe).
    pub fn to_toml(&self) -> Result<String, RecipeError> {
        toml::to_string(self).map_err(|e| RecipeError::Invalid(e.to_string()))
    }

    /// Checks the version, the calibration settings, every filter and every method.
    pub fn validate(&self) -> Result<(), RecipeError> {
        if self.version != RECIPE_VERSION {
            return Err(RecipeError::Invalid(format!(
                "version = {} is not supported (this build reads version {RECIPE_VERSION})",
                self.version
            )));
        }
        let c = &self.calibration;
        for (name, v) in [
            ("nsamples", c.nsamples),
            ("seqlen", c.seqlen),
            ("batch_size", c.batch_size),
        ] {
            if v == 0 {
                return Err(RecipeError::Invalid(format!(
                    "calibration.{name} must be at least 1"
                )));
            }
        }
        if self.steps.is_empty() {
            return Err(RecipeError::Invalid(
                "a recipe needs at least one [[step]]".into(),
            ));
        }
        if let Some(h) = &self.heal {
            h.validate().map_err(RecipeError::Invalid)?;
        }
        self.pipeline().map(|_| ())
    }

    /// An error for tools that run only the layer steps ([`Recipe::pipeline`]) when the recipe
    /// also has a `[heal]` stage, so it is never skipped silently.
    pub fn without_heal(&self, tool: &str) -> Result<(), RecipeError> {
        match self.heal {
            Some(_) => Err(RecipeError::Invalid(format!(
                "the recipe has a [heal] stage, which {tool} does not run; use `compress run`"
            ))),
            None => Ok(()),
        }
    }

    /// The pipeline of the recipe's layer steps (a `[heal]` stage is separate:
    /// [`Recipe::heal`]).
    pub fn pipeline(&self) -> Result<Pipeline, RecipeError> {
        let mut pipeline = Pipeline::new();
        pipeline.batch_size = self.calibration.batch_size;
        pipeline.precision = self.calibration.precision.into();
        pipeline.keep_intermediates = self.calibration.keep_intermediates;
        for (i, step) in self.steps.iter().enumerate() {
            let at = |m: String| {
                RecipeError::Invalid(format!(
                    "step {} ({}): {m}",
                    i + 1,
                    step.method.method_name()
                ))
            };
            let filter = match &step.layers {
                None => LayerFilter::All,
                Some(p) => LayerFilter::regex(p).map_err(|e| at(format!("layers: {e}")))?,
            };
            let compressor = step.method.build().map_err(at)?;
            pipeline.steps.push(PipelineStep { filter, compressor });
        }
        Ok(pipeline)
    }
}
