//! Nested (Matryoshka) width support: reordering FFN neurons and key/value groups so that the
//! most important come first, and a forward pass in which only a prefix of every block's
//! neurons and heads is active.
//!
//! - **Reordering** permutes structures without changing the function: FFN neuron `i` is row `i`
//!   of `gate_proj` and `up_proj` and column `i` of `down_proj`, and the MLP is a sum over
//!   neurons, so permuting all three by the same order leaves the output unchanged. A query head
//!   is `head_dim` rows of `q_proj` and the same columns of `o_proj`; a key/value head serves a
//!   contiguous group of query heads, so a permutation of heads must move whole groups together
//!   with their key/value head (and may reorder heads inside a group).
//! - **Prefix forward**: every head's context and every neuron's activation is multiplied by a
//!   0/1 gate before the output projections, which equals removing the gated-off structures
//!   exactly. This is how a nested (MatFormer-style) student trains all its widths with one set
//!   of weights; [`LlamaModel::keep_ffn_neurons`] and [`LlamaModel::keep_heads`] then cut the
//!   same prefix out for real.

use burn::tensor::{Device, Int, Tensor, TensorData};
use compress_core::layer_id::Expert;
use compress_core::linear::{CompressedLinear, DenseLinear};

use super::surgery::invalid;
use super::{full_sequence, LlamaModel};
use crate::error::ModelError;

/// 0/1 gates of one block: which query heads and FFN neurons are active.
#[derive(Debug, Clone)]
pub struct BlockGates {
    /// One gate per query head, `[heads]`.
    pub heads: Tensor<1>,
    /// One gate per FFN neuron, `[ffn]`.
    pub ffn: Tensor<1>,
}

/// How much of every block a prefix keeps: the first `ffn` neurons and the first `kv_groups`
/// key/value groups (with all their query heads). In a mixture of experts every routed expert
/// keeps its first `ffn` neurons and the shared expert its first `shared_ffn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixWidth {
    /// FFN neurons kept per block (per routed expert in a mixture of experts).
    pub ffn: usize,
    /// Key/value groups kept per block.
    pub kv_groups: usize,
    /// Neurons kept in a mixture's shared expert; ignored by blocks without one.
    pub shared_ffn: usize,
}

fn check_permutation(order: &[usize], len: usize, what: &str) -> Result<(), ModelError> {
    let mut seen = vec![false; len];
    for &i in order {
        if i >= len || std::mem::replace(&mut seen[i], true) {
            return Err(invalid(format!(
                "{what}: {order:?} is not a permutation of 0..{len}"
            )));
        }
    }
    if order.len() != len {
        return Err(invalid(format!(
            "{what}: a permutation of 0..{len} needs {len} entries, got {}",
            order.len()
        )));
    }
    Ok(())
}

impl LlamaModel {
    /// Permutes the FFN neurons of block `block`'s dense MLP: new neuron `j` is old neuron
    /// `order[j]`. The block computes the same function.
    pub fn reorder_ffn_neurons(&mut self, block: usize, order: &[usize]) -> Result<(), ModelError> {
        self.reorder_unit_neurons(block, None, order)
    }

    /// Permutes the neurons of the gated MLP `unit` of block `block` (`None`: the dense MLP;
    /// `Some(expert)`: one expert of a mixture): new neuron `j` is old neuron `order[j]`. The
    /// block computes the same function.
    pub fn reorder_unit_neurons(
        &mut self,
        block: usize,
        unit: Option<Expert>,
        order: &[usize],
    ) -> Result<(), ModelError> {
        let width = self.unit_ffn_width(block, unit)?;
        check_permutation(order, width, &format!("layers.{block}.mlp ({unit:?})"))?;
        self.cut_ffn(block, unit, order)
    }

    /// Permutes the query heads of block `block`: new head `j` is old head `order[j]`. Every run
    /// of `heads / kv_heads` consecutive new heads must come from one old key/value group, which
    /// moves with them. The block computes the same function.
    pub fn reorder_heads(&mut self, block: usize, order: &[usize]) -> Result<(), ModelError> {
        let what = format!("layers.{block}.attn");
        if block >= self.layers.len() {
            return Err(invalid(format!("{what}: no such block")));
        }
        let shape = self.head_shape(block);
        check_permutation(order, shape.heads, &what)?;
        let g = shape.heads / shape.kv_heads;
        let mut groups = Vec::with_capacity(shape.kv_heads);
        for run in order.chunks(g) {
            let kv = run[0] / g;
            if run.iter().any(|&h| h / g != kv) {
                return Err(invalid(format!(
                    "{what}: heads {run:?} come from different key/value groups (groups of {g})"
                )));
            }
            groups.push(kv);
        }
        self.cut_heads(block, order, &groups)
    }

    /// Gates that keep the prefix `width` of every block (on `device`), or an error naming the
    /// block whose FFN or groups are narrower than asked.
    pub fn prefix_gates(
        &self,
        width: PrefixWidth,
        device: &Device,
    ) -> Result<Vec<BlockGates>, ModelError> {
        let ones = |n: usize, k: usize| {
            let v: Vec<f32> = (0..n).map(|i| if i < k { 1.0 } else { 0.0 }).collect();
            Tensor::<1>::from_data(TensorData::new(v, [n]), device)
        };
        (0..self.layers.len())
            .map(|b| {
                let s = self.head_shape(b);
                let ffn = self.ffn_width(b);
                if width.ffn == 0 || width.ffn > ffn || width.kv_groups == 0 || width.kv_groups > s.kv_heads
                {
                    return Err(invalid(format!(
                        "layers.{b}: prefix of {} FFN neurons and {} key/value groups does not fit {ffn} neurons and {} groups",
                        width.ffn, width.kv_groups, s.kv_heads
                    )));
                }
                if let Some(u) = self.ffn_units(b).into_iter().find(|u| {
                    let kept = if *u == Some(Expert::Shared) { width.shared_ffn } else { width.ffn };
                    u.is_some() && self.unit_ffn_width(b, *u).is_ok_and(|w| kept < w)
                }) {
                    return Err(invalid(format!(
                        "layers.{b}.mlp ({u:?}): gates nest dense MLPs; nest a mixture's experts by \
                         sorting and slicing (keep_prefix)"
                    )));
                }
                let g = s.heads / s.kv_heads;
                Ok(BlockGates {
                    heads: ones(s.heads, width.kv_groups * g),
                    ffn: ones(ffn, width.ffn),
                })
            })
            .collect()
    }

    /// Cuts the prefix `width` out of every block for real (the sliced model is smaller): every
    /// dense MLP and routed expert keeps its first `width.ffn` neurons, a shared expert its
    /// first `width.shared_ffn`.
    pub fn keep_prefix(&mut self, width: PrefixWidth) -> Result<(), ModelError> {
        for b in 0..self.layers.len() {
            let s = self.head_shape(b);
            let g = s.heads / s.kv_heads;
            if width.kv_groups < s.kv_heads {
                let keep: Vec<usize> = (0..width.kv_groups * g).collect();
                self.keep_heads(b, &keep)?;
            }
            for unit in self.ffn_units(b) {
                let kept = match unit {
                    Some(Expert::Shared) => width.shared_ffn,
                    _ => width.ffn,
                };
                if kept < self.unit_ffn_width(b, unit)? {
                    let keep: Vec<usize> = (0..kept).collect();
                    self.keep_unit_neurons(b, unit, &keep)?;
                }
            }
        }
        Ok(())
    }

    /// Logits `[batch, seq, vocab]` of unpadded sequences `tokens: [batch, seq]` with every
    /// block's heads and neurons multiplied by `gates` (one per block; `None` = all active), and
    /// the hidden states after the blocks listed in `hidden_at` (in that order) — what a
    /// distillation loss needs. Works on an autodiff device (the training forward). A tied head
    /// is computed from the embedding.
    pub fn forward_train(
        &self,
        tokens: Tensor<2, Int>,
        gates: Option<&[BlockGates]>,
        hidden_at: &[usize],
    ) -> Result<(Tensor<3>, Vec<Tensor<3>>), ModelError> {
        let [b, t] = tokens.dims();
        self.check_len(t)?;
        if let Some(g) = gates {
            if g.len() != self.layers.len() {
                return Err(invalid(format!(
                    "{} block gates for {} blocks",
                    g.len(),
                    self.layers.len()
                )));
            }
        }
        if let Some(&bad) = hidden_at.iter().find(|&&i| i >= self.layers.len()) {
            return Err(invalid(format!(
                "hidden state of block {bad} asked; the model has {} blocks",
                self.layers.len()
            )));
        }
        let (positions, mask) = full_sequence(b, t, &tokens.device());
        let mut x = self.embed(tokens);
        let mut hidden: Vec<Option<Tensor<3>>> = vec![None; hidden_at.len()];
        for (i, layer) in self.layers.iter().enumerate() {
            let g = gates.map(|g| (&g[i].heads, &g[i].ffn));
            x = layer.forward_gated(
                x,
                self.rope_of(i),
                positions.clone(),
                Some(self.layer_mask(i, mask.clone())),
                None,
                g,
            );
            for (slot, _) in hidden_at.iter().enumerate().filter(|(_, &h)| h == i) {
                hidden[slot] = Some(x.clone());
            }
        }
        let x = self.norm.forward(x);
        // A tied head reads the embedding itself, so training keeps the two tied (the stored
        // head is a copy; `retie_head` refreshes it after training).
        let logits = if self.config.tie_word_embeddings {
            x.matmul(self.embedding.val().transpose().unsqueeze::<3>())
        } else {
            self.lm_head.forward(x)
        };
        let logits = super::soft_cap(logits, self.config.variant.final_softcap);
        Ok((logits, hidden.into_iter().flatten().collect()))
    }

    /// With tied embeddings, replaces the output head by a copy of the current embedding (after
    /// training changed the embedding); otherwise does nothing.
    pub fn retie_head(&mut self) {
        if self.config.tie_word_embeddings {
            self.lm_head = CompressedLinear::Dense(DenseLinear::new(self.embedding.val(), None));
        }
    }
}
