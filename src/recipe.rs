//! Recipes over every method the workspace implements so far.
//!
//! [`Method`] is the union of the method crates' recipe configurations: the quantizers (`rtn`,
//! `gptq`, `hqq`, `awq`; [`compress_quant::recipe`]), the pruners (`magnitude`, `wanda`,
//! `sparsegpt`; [`compress_prune::recipe`]) and the low-rank factorizations (`svd`, `asvd`,
//! `svd-llm`; [`compress_lowrank::recipe`]). See [`compress_core::recipe`] for the file format
//! and `examples/recipes/` for complete recipes.
//!
//! ```
//! let recipe = compress::recipe::Recipe::from_toml(r#"
//! version = 1
//! [[step]]
//! method = "sparsegpt"
//! sparsity = 0.5
//!
//! [[step]]
//! method = "gptq"
//! bits = 4
//! group = 128
//! "#).unwrap();
//! let names: Vec<String> = recipe.pipeline().unwrap().steps.iter().map(|s| s.compressor.name()).collect();
//! assert_eq!(names, ["sparsegpt-50", "gptq-w4g128"]);
//! ```

use compress_core::compressor::Compressor;
use compress_core::recipe::StepMethod;
use compress_lowrank::recipe::LowRankMethod;
use compress_prune::recipe::PruneMethod;
use compress_quant::recipe::QuantMethod;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// A step's method and parameters: a quantizer or a pruner, chosen by the step's `method` key.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Method {
    /// `rtn`, `gptq`, `hqq`, `awq`.
    Quant(QuantMethod),
    /// `magnitude`, `wanda`, `sparsegpt`.
    Prune(PruneMethod),
    /// `svd`, `asvd`, `svd-llm`, `lowrank-correction`.
    LowRank(LowRankMethod),
}

const QUANT: [&str; 4] = ["rtn", "gptq", "hqq", "awq"];
const PRUNE: [&str; 3] = ["magnitude", "wanda", "sparsegpt"];
const LOWRANK: [&str; 4] = ["svd", "asvd", "svd-llm", "lowrank-correction"];

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Dispatch on `method` so a bad field is reported by the method's own (strict) parser.
        let v = toml::Value::deserialize(d)?;
        let name = v
            .get("method")
            .and_then(|m| m.as_str())
            .ok_or_else(|| D::Error::custom("missing field `method`"))?
            .to_string();
        if QUANT.contains(&name.as_str()) {
            QuantMethod::deserialize(v)
                .map(Method::Quant)
                .map_err(D::Error::custom)
        } else if PRUNE.contains(&name.as_str()) {
            PruneMethod::deserialize(v)
                .map(Method::Prune)
                .map_err(D::Error::custom)
        } else if LOWRANK.contains(&name.as_str()) {
            LowRankMethod::deserialize(v)
                .map(Method::LowRank)
                .map_err(D::Error::custom)
        } else {
            Err(D::Error::custom(format!(
                "unknown method `{name}`, expected one of {}",
                QUANT
                    .iter()
                    .chain(&PRUNE)
                    .chain(&LOWRANK)
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
}

impl From<QuantMethod> for Method {
    fn from(m: QuantMethod) -> Self {
        Method::Quant(m)
    }
}

impl From<LowRankMethod> for Method {
    fn from(m: LowRankMethod) -> Self {
        Method::LowRank(m)
    }
}

impl From<PruneMethod> for Method {
    fn from(m: PruneMethod) -> Self {
        Method::Prune(m)
    }
}

impl StepMethod for Method {
    fn method_name(&self) -> &'static str {
        match self {
            Method::Quant(m) => m.method_name(),
            Method::Prune(m) => m.method_name(),
            Method::LowRank(m) => m.method_name(),
        }
    }

    fn build(&self) -> Result<Box<dyn Compressor>, String> {
        match self {
            Method::Quant(m) => m.build(),
            Method::Prune(m) => m.build(),
            Method::LowRank(m) => m.build(),
        }
    }
}

/// A recipe over [`Method`].
pub type Recipe = compress_core::recipe::Recipe<Method>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_recipes_round_trip_and_errors_name_the_field() {
        let text = "version = 1\n[[step]]\nmethod = \"wanda\"\nnm = \"2:4\"\n\n[[step]]\nmethod = \"rtn\"\nbits = 8\n";
        let r = Recipe::from_toml(text).unwrap();
        assert!(matches!(r.steps[0].method, Method::Prune(_)));
        assert!(matches!(r.steps[1].method, Method::Quant(_)));
        assert_eq!(Recipe::from_toml(&r.to_toml().unwrap()).unwrap(), r);
        let e = Recipe::from_toml("version = 1\n[[step]]\nmethod = \"wanda\"\nsparsty = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sparsty"), "{e}");
        let e = Recipe::from_toml("version = 1\n[[step]]\nmethod = \"prune\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown method `prune`") && e.contains("`sparsegpt`"),
            "{e}"
        );
    }
}
