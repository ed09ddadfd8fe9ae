//! Reading a Hugging Face `config.json`: the keys every family shares, typed access to the
//! rest, and RoPE parameters in both spellings (transformers 4's `rope_theta` + `rope_scaling`,
//! and transformers 5's `rope_parameters`, per layer type where the family has several).

use serde_json::{Map, Value};

use super::Family;
use crate::config::{LayerAttention, LlamaConfig, RopeLayout, RopeScaling, Variant};
use crate::error::ModelError;

/// A parsed `config.json` object.
#[derive(Debug, Clone)]
pub struct HfConfigJson {
    raw: Map<String, Value>,
}

impl HfConfigJson {
    /// Parses `text`; the error is the JSON parser's message.
    pub fn parse(text: &str) -> Result<Self, String> {
        match serde_json::from_str::<Value>(text).map_err(|e| e.to_string())? {
            Value::Object(raw) => Ok(Self { raw }),
            _ => Err("the config is not a JSON object".into()),
        }
    }

    /// `architectures[0]`, or `""`.
    pub fn class(&self) -> &str {
        self.raw
            .get("architectures")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn bad(key: &str, want: &str, v: &Value) -> ModelError {
        ModelError::InvalidConfig(format!("`{key}` must be {want}, found {v}"))
    }

    /// Whether the file has `key` at all (even as `null`).
    pub fn contains(&self, key: &str) -> bool {
        self.raw.contains_key(key)
    }

    /// The value at `key` unless absent or `null`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    /// A non-negative integer key.
    pub fn usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| Self::bad(key, "a non-negative integer", v))
            })
            .transpose()
    }

    /// A required non-negative integer key.
    pub fn required_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.usize(key)?
            .ok_or_else(|| ModelError::InvalidConfig(format!("`{key}` is missing")))
    }

    /// A number key, as f32.
    pub fn f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        number(self.get(key), key)
    }

    /// A boolean key.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        self.get(key)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| Self::bad(key, "true or false", v))
            })
            .transpose()
    }

    /// A string key.
    pub fn str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| Self::bad(key, "a string", v)))
            .transpose()
    }

    /// `layer_types` (`"sliding_attention"` / `"full_attention"` per layer), if present.
    pub fn layer_types(&self) -> Result<Option<Vec<LayerAttention>>, ModelError> {
        let Some(v) = self.get("layer_types") else {
            return Ok(None);
        };
        let items = v
            .as_array()
            .ok_or_else(|| Self::bad("layer_types", "a list", v))?;
        items
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(LayerAttention::Sliding),
                Some("full_attention") => Ok(LayerAttention::Global),
                _ => Err(Self::bad(
                    "layer_types",
                    "a list of \"sliding_attention\" / \"full_attention\"",
                    t,
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// The RoPE base and scaling of the layers of type `layer_type` (`"full_attention"` or
    /// `"sliding_attention"`, for families whose layer types differ), from `rope_parameters`
    /// or the older `rope_theta` / `rope_scaling` (and, for sliding layers, `local_theta_key`).
    /// `None` for a base the file does not give.
    pub fn rope(
        &self,
        layer_type: Option<&str>,
        local_theta_key: Option<&str>,
    ) -> Result<(Option<f32>, Option<RopeScaling>), ModelError> {
        let max_pos = self.usize("max_position_embeddings")?;
        let original = self.usize("original_max_position_embeddings")?;
        if let Some(params) = self.get("rope_parameters") {
            let obj = params
                .as_object()
                .ok_or_else(|| Self::bad("rope_parameters", "an object", params))?;
            let obj = match layer_type.and_then(|t| obj.get(t)) {
                Some(Value::Object(sub)) => sub,
                Some(v) => return Err(Self::bad("rope_parameters", "objects per layer type", v)),
                None => obj,
            };
            let theta = number(obj.get("rope_theta"), "rope_parameters.rope_theta")?;
            let scaling = scaling_of(obj, "rope_parameters", max_pos, original)?;
            return Ok((theta, scaling));
        }
        let sliding = layer_type == Some("sliding_attention");
        match (sliding, local_theta_key) {
            (true, Some(key)) => Ok((self.f32(key)?, None)),
            _ => {
                let theta = self.f32("rope_theta")?;
                let scaling = match self.get("rope_scaling") {
                    None => None,
                    Some(Value::Object(obj)) => scaling_of(obj, "rope_scaling", max_pos, original)?,
                    Some(v) => return Err(Self::bad("rope_scaling", "an object", v)),
                };
                Ok((theta, scaling))
            }
        }
    }

    /// The config of `family`: the common keys, then the family's own
    /// ([`Family::read_hf`]).
    pub fn to_config(&self, family: &Family) -> Result<LlamaConfig, ModelError> {
        let heads = self.required_usize("num_attention_heads")?;
        if heads == 0 {
            return Err(ModelError::InvalidConfig(
                "num_attention_heads must be positive".into(),
            ));
        }
        let hidden = self.required_usize("hidden_size")?;
        let (theta, scaling) = self.rope(Some("full_attention"), None)?;
        let mut c = LlamaConfig {
            architecture: family.architecture,
            vocab_size: self.required_usize("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: self.required_usize("intermediate_size")?,
            num_layers: self.required_usize("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: self.usize("num_key_value_heads")?.unwrap_or(heads),
            head_dim: self
                .usize("head_dim")?
                .unwrap_or(hidden.checked_div(heads).unwrap_or(0)),
            rms_norm_eps: self.f32("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: theta.unwrap_or(10_000.0),
            rope_layout: RopeLayout::NeoX,
            max_seq_len: self.usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: self
                .bool("tie_word_embeddings")?
                .unwrap_or(family.hf.tie_default),
            attention_bias: self.bool("attention_bias")?.unwrap_or(false),
            variant: Variant {
                rope_scaling: scaling,
                ..Variant::default()
            },
        };
        if let Some(RopeScaling::LongRope {
            original_max_position_embeddings,
            ..
        }) = &c.variant.rope_scaling
        {
            // The short factors apply up to the original context; beyond it the long factors
            // would, which this decoder does not switch to.
            c.max_seq_len = c.max_seq_len.min(*original_max_position_embeddings);
        }
        c.validate_sizes().map_err(ModelError::InvalidConfig)?;
        (family.read_hf)(self, &mut c)?;
        Ok(c)
    }

    /// The layer types from `layer_types`, or every layer sliding when `sliding_window` is set
    /// and `applies` (Mistral, Phi-3), or none.
    pub fn sliding_everywhere(&self, c: &mut LlamaConfig, applies: bool) -> Result<(), ModelError> {
        // transformers writes 0 for "no window".
        let window = self.usize("sliding_window")?.filter(|&w| w > 0);
        if let Some(types) = self.layer_types()? {
            c.variant.layer_attention = types;
            c.variant.sliding_window = window;
        } else if let (Some(w), true) = (window, applies) {
            c.variant.sliding_window = Some(w);
            c.variant.layer_attention = vec![LayerAttention::Sliding; c.num_layers];
        }
        Ok(())
    }
}

fn number(v: Option<&Value>, key: &str) -> Result<Option<f32>, ModelError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| HfConfigJson::bad(key, "a number", v)),
    }
}

/// The scaling rule of a `rope_scaling` / `rope_parameters` object (transformers'
/// `rope_type`, or the older `type`).
fn scaling_of(
    obj: &Map<String, Value>,
    what: &str,
    max_pos: Option<usize>,
    original_top: Option<usize>,
) -> Result<Option<RopeScaling>, ModelError> {
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| number(obj.get(k), &format!("{what}.{k}"));
    let need = |k: &str| -> Result<f32, ModelError> {
        num(k)?.ok_or_else(|| ModelError::InvalidConfig(format!("{what} ({kind}) needs `{k}`")))
    };
    let count = |k: &str| -> Result<Option<usize>, ModelError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| HfConfigJson::bad(&format!("{what}.{k}"), "an integer", v)),
        }
    };
    let original = || -> Result<usize, ModelError> {
        count("original_max_position_embeddings")?
            .or(original_top)
            .or(max_pos)
            .ok_or_else(|| {
                ModelError::InvalidConfig(format!(
                    "{what} ({kind}) needs `original_max_position_embeddings`"
                ))
            })
    };
    let factors = |k: &str| -> Result<Vec<f32>, ModelError> {
        let v = obj
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| ModelError::InvalidConfig(format!("{what} ({kind}) needs `{k}`")))?;
        v.iter()
            .map(|x| number(Some(x), &format!("{what}.{k}")).map(|x| x.unwrap_or(f32::NAN)))
            .collect()
    };
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: need("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: original()?,
        }),
        "yarn" => {
            let factor = need("factor")?;
            let mscale = |s: f32, m: f32| {
                if s <= 1.0 {
                    1.0
                } else {
                    0.1 * m * s.ln() + 1.0
                }
            };
            let attention_factor = match (num("attention_factor")?, num("mscale")?, num("mscale_all_dim")?) {
                (Some(a), _, _) => Some(a),
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    Some(mscale(factor, m) / mscale(factor, all))
                }
                _ => None,
            };
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original()?,
                beta_fast: num("beta_fast")?.unwrap_or(32.0),
                beta_slow: num("beta_slow")?.unwrap_or(1.0),
                attention_factor,
            })
        }
        "longrope" | "su" => Some(RopeScaling::LongRope {
            short_factor: factors("short_factor")?,
            long_factor: factors("long_factor")?,
            original_max_position_embeddings: original()?,
            max_position_embeddings: max_pos.ok_or_else(|| {
                ModelError::InvalidConfig(format!("{what} ({kind}) needs `max_position_embeddings`"))
            })?,
        }),
        other => {
            return Err(ModelError::InvalidConfig(format!(
                "{what}: RoPE scaling `{other}` is not supported (supported: linear, llama3, yarn, longrope)"
            )))
        }
    })
}

/// A scaling rule as transformers' `rope_scaling` object, or why it has none (per-dimension
/// divisors read from a GGUF follow no transformers rule).
pub(crate) fn rope_scaling_json(s: &RopeScaling) -> Result<Value, String> {
    Ok(match s {
        RopeScaling::Linear { factor } => {
            serde_json::json!({"rope_type": "linear", "factor": factor})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => serde_json::json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
        } => serde_json::json!({
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "beta_fast": beta_fast,
            "beta_slow": beta_slow,
            "attention_factor": attention_factor,
        }),
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            ..
        } => serde_json::json!({
            "rope_type": "longrope",
            "short_factor": short_factor,
            "long_factor": long_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
        RopeScaling::Divisors { .. } => {
            return Err(
                "per-dimension RoPE divisors (as read from a GGUF) follow no rule \
                        transformers knows"
                    .into(),
            )
        }
    })
}

/// `layer_types` as transformers writes it.
pub(crate) fn layer_types_json(c: &LlamaConfig) -> Value {
    (0..c.num_layers)
        .map(|l| match c.variant.attention_of(l) {
            LayerAttention::Sliding => Value::from("sliding_attention"),
            LayerAttention::Global => Value::from("full_attention"),
        })
        .collect()
}
