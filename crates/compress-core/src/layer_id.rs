//! Typed identity of a model's linear layers.
//!
//! Every compressible matrix of a decoder is named by a [`LinearId`]: its block (or none, for
//! the output head), the expert it belongs to in a mixture-of-experts block, and its
//! [`LinearKind`] (query, key, …, router). Filters, reports, sensitivity tables, kernel choices,
//! containers and exporters all use the id; its printed form is the familiar path
//! (`layers.3.attn.q_proj`, `layers.3.mlp.experts.5.down_proj`, `lm_head`), which regex filters
//! match and files store. Code never parses a path back into meaning except where a path is read
//! from outside (a container header, a command-line argument): [`LinearId::from_str`].
//!
//! ```
//! use compress_core::layer_id::{Expert, LinearId, LinearKind};
//!
//! let q = LinearId::block(3, LinearKind::Q);
//! assert_eq!(q.to_string(), "layers.3.attn.q_proj");
//! let e = LinearId::expert(1, Expert::Routed(5), LinearKind::Down);
//! assert_eq!(e.to_string(), "layers.1.mlp.experts.5.down_proj");
//! assert_eq!("layers.1.mlp.experts.5.down_proj".parse::<LinearId>().unwrap(), e);
//! assert_eq!(LinearId::HEAD.to_string(), "lm_head");
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a linear computes within its block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LinearKind {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// Fused query/key/value projection (Phi-3 `qkv_proj`), kept fused.
    Qkv,
    /// Gate projection of a gated MLP.
    Gate,
    /// Up projection of a gated MLP.
    Up,
    /// Fused gate/up projection (Phi-3 `gate_up_proj`), kept fused.
    GateUp,
    /// Down projection of an MLP.
    Down,
    /// The router of a mixture-of-experts block (`[experts, hidden]`), or the gate that scales a
    /// shared expert's output (`[1, hidden]`).
    Router,
    /// The output head (`[vocab, hidden]`).
    Head,
}

impl LinearKind {
    /// Every kind, in the order a block computes them (the head last).
    pub const ALL: [LinearKind; 11] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::Qkv,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::GateUp,
        LinearKind::Down,
        LinearKind::Router,
        LinearKind::Head,
    ];

    /// The last component of the printed path: `q_proj`, `gate_up_proj`, `router`, `lm_head`.
    pub fn short_name(self) -> &'static str {
        match self {
            LinearKind::Q => "q_proj",
            LinearKind::K => "k_proj",
            LinearKind::V => "v_proj",
            LinearKind::O => "o_proj",
            LinearKind::Qkv => "qkv_proj",
            LinearKind::Gate => "gate_proj",
            LinearKind::Up => "up_proj",
            LinearKind::GateUp => "gate_up_proj",
            LinearKind::Down => "down_proj",
            LinearKind::Router => "router",
            LinearKind::Head => "lm_head",
        }
    }

    /// Whether the kind belongs to the attention sub-layer.
    pub fn is_attention(self) -> bool {
        matches!(
            self,
            LinearKind::Q | LinearKind::K | LinearKind::V | LinearKind::O | LinearKind::Qkv
        )
    }

    /// Whether the kind produces queries or keys (whose rows RoPE pairs up: exporters reorder
    /// them between layouts).
    pub fn is_rotated(self) -> bool {
        matches!(self, LinearKind::Q | LinearKind::K)
    }

    fn from_short_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.short_name() == s)
    }
}

/// Which expert of a mixture-of-experts block a linear belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Expert {
    /// Routed expert number `e` (`0..num_experts`).
    Routed(u32),
    /// The always-active shared expert (Qwen2-MoE, DeepSeek-MoE).
    Shared,
}

/// The identity of one linear layer of a model. See the [module docs](self). Serialized as its
/// printed path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinearId {
    block: Option<usize>,
    expert: Option<Expert>,
    kind: LinearKind,
}

impl LinearId {
    /// The output head.
    pub const HEAD: LinearId = LinearId {
        block: None,
        expert: None,
        kind: LinearKind::Head,
    };

    /// A linear of block `block` outside any expert (attention, a dense MLP, a router).
    ///
    /// # Panics
    /// If `kind` is [`LinearKind::Head`] (use [`LinearId::HEAD`]).
    pub fn block(block: usize, kind: LinearKind) -> Self {
        assert!(kind != LinearKind::Head, "the head is not in a block");
        Self {
            block: Some(block),
            expert: None,
            kind,
        }
    }

    /// A linear of expert `expert` of block `block`.
    ///
    /// # Panics
    /// If `kind` is not an MLP projection or a shared expert's gate (router).
    pub fn expert(block: usize, expert: Expert, kind: LinearKind) -> Self {
        let ok = match expert {
            Expert::Routed(_) => matches!(
                kind,
                LinearKind::Gate | LinearKind::Up | LinearKind::GateUp | LinearKind::Down
            ),
            Expert::Shared => matches!(
                kind,
                LinearKind::Gate
                    | LinearKind::Up
                    | LinearKind::GateUp
                    | LinearKind::Down
                    | LinearKind::Router
            ),
        };
        assert!(ok, "an expert has no {kind:?} projection");
        Self {
            block: Some(block),
            expert: Some(expert),
            kind,
        }
    }

    /// The block, or `None` for the head.
    pub fn block_index(&self) -> Option<usize> {
        self.block
    }

    /// The expert, if the linear belongs to one.
    pub fn expert_ref(&self) -> Option<Expert> {
        self.expert
    }

    /// What the linear computes.
    pub fn kind(&self) -> LinearKind {
        self.kind
    }

    /// Whether this is the output head.
    pub fn is_head(&self) -> bool {
        self.kind == LinearKind::Head
    }

    /// The same linear in block `block` (e.g. to look up block 0's counterpart).
    pub fn in_block(self, block: usize) -> Self {
        match self.block {
            Some(_) => Self {
                block: Some(block),
                ..self
            },
            None => self,
        }
    }

    /// The path within the block: `attn.q_proj`, `mlp.experts.5.down_proj`, `mlp.router`;
    /// `lm_head` for the head.
    pub fn name_in_block(&self) -> String {
        let short = self.kind.short_name();
        match (self.kind, self.expert) {
            (LinearKind::Head, _) => short.to_string(),
            (k, None) if k.is_attention() => format!("attn.{short}"),
            (_, None) => format!("mlp.{short}"),
            (LinearKind::Router, Some(Expert::Shared)) => "mlp.shared_expert_gate".to_string(),
            (_, Some(Expert::Shared)) => format!("mlp.shared_expert.{short}"),
            (_, Some(Expert::Routed(e))) => format!("mlp.experts.{e}.{short}"),
        }
    }
}

impl fmt::Display for LinearId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.block {
            None => f.write_str(LinearKind::Head.short_name()),
            Some(b) => write!(f, "layers.{b}.{}", self.name_in_block()),
        }
    }
}

/// A path that names no linear (see [`LinearId::from_str`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a linear layer's path (expected e.g. `layers.0.attn.q_proj`, `layers.1.mlp.experts.3.down_proj` or `lm_head`)")]
pub struct ParseLinearIdError(pub String);

impl FromStr for LinearId {
    type Err = ParseLinearIdError;

    /// Parses the printed form ([`Display`](fmt::Display)) back; the inverse of `to_string`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLinearIdError(s.to_string());
        if s == LinearKind::Head.short_name() {
            return Ok(Self::HEAD);
        }
        let rest = s.strip_prefix("layers.").ok_or_else(err)?;
        let (block, rest) = rest.split_once('.').ok_or_else(err)?;
        if block.is_empty() || !block.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let block: usize = block.parse().map_err(|_| err())?;
        let parts: Vec<&str> = rest.split('.').collect();
        let kind =
            |name: &str| LinearKind::from_short_name(name).filter(|k| *k != LinearKind::Head);
        let id = match parts.as_slice() {
            ["attn", name] => kind(name)
                .filter(|k| k.is_attention())
                .map(|k| LinearId::block(block, k)),
            ["mlp", "shared_expert_gate"] => {
                Some(LinearId::expert(block, Expert::Shared, LinearKind::Router))
            }
            ["mlp", name] => kind(name)
                .filter(|k| !k.is_attention())
                .map(|k| LinearId::block(block, k)),
            ["mlp", "shared_expert", name] => kind(name)
                .filter(|k| !k.is_attention() && *k != LinearKind::Router)
                .map(|k| LinearId::expert(block, Expert::Shared, k)),
            ["mlp", "experts", e, name]
                if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let e: u32 = e.parse().map_err(|_| err())?;
                kind(name)
                    .filter(|k| !k.is_attention() && *k != LinearKind::Router)
                    .map(|k| LinearId::expert(block, Expert::Routed(e), k))
            }
            _ => None,
        };
        let id = id.ok_or_else(err)?;
        // One spelling per id: `layers.01.…` does not round-trip.
        if id.to_string() != s {
            return Err(err());
        }
        Ok(id)
    }
}

impl Serialize for LinearId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LinearId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn printed_forms_match_the_llama_paths() {
        let cases = [
            (LinearId::block(0, LinearKind::Q), "layers.0.attn.q_proj"),
            (LinearId::block(2, LinearKind::O), "layers.2.attn.o_proj"),
            (
                LinearId::block(2, LinearKind::Qkv),
                "layers.2.attn.qkv_proj",
            ),
            (
                LinearId::block(7, LinearKind::Gate),
                "layers.7.mlp.gate_proj",
            ),
            (
                LinearId::block(7, LinearKind::GateUp),
                "layers.7.mlp.gate_up_proj",
            ),
            (
                LinearId::block(7, LinearKind::Down),
                "layers.7.mlp.down_proj",
            ),
            (
                LinearId::block(1, LinearKind::Router),
                "layers.1.mlp.router",
            ),
            (
                LinearId::expert(1, Expert::Shared, LinearKind::Up),
                "layers.1.mlp.shared_expert.up_proj",
            ),
            (
                LinearId::expert(1, Expert::Shared, LinearKind::Router),
                "layers.1.mlp.shared_expert_gate",
            ),
            (LinearId::HEAD, "lm_head"),
        ];
        for (id, path) in cases {
            assert_eq!(id.to_string(), path);
            assert_eq!(path.parse::<LinearId>().unwrap(), id, "{path}");
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "",
            "layers",
            "layers.x.attn.q_proj",
            "layers.01.attn.q_proj",
            "layers.0.attn.gate_proj",
            "layers.0.mlp.q_proj",
            "layers.0.attn.lm_head",
            "layers.0.mlp.experts.1.router",
            "layers.0.mlp.experts..down_proj",
            "layers.0.mlp.down_proj.extra",
            "model.layers.0.self_attn.q_proj",
        ] {
            let e = bad.parse::<LinearId>().unwrap_err();
            assert!(e.to_string().contains(&format!("`{bad}`")), "{e}");
        }
    }

    fn any_id() -> impl Strategy<Value = LinearId> {
        let kinds = prop::sample::select(LinearKind::ALL.to_vec());
        (
            0usize..100,
            kinds,
            prop::option::of(0u32..64),
            any::<bool>(),
        )
            .prop_map(|(b, kind, e, shared)| match (kind, e) {
                (LinearKind::Head, _) => LinearId::HEAD,
                (k, Some(_)) if shared && !k.is_attention() => {
                    LinearId::expert(b, Expert::Shared, k)
                }
                (k, Some(e)) if !k.is_attention() && k != LinearKind::Router => {
                    LinearId::expert(b, Expert::Routed(e), k)
                }
                (k, _) => LinearId::block(b, k),
            })
    }

    proptest! {
        #[test]
        fn every_id_round_trips_through_its_path(id in any_id()) {
            let path = id.to_string();
            prop_assert_eq!(path.parse::<LinearId>().unwrap(), id);
            prop_assert_eq!(id.in_block(5).block_index(), id.block_index().map(|_| 5));
        }
    }
}
